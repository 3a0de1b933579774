"""Where an export puts a recording: path template rendering and sanitising (pure).

Every node must render the same path for the same recording (a backup continuing an
export, two nodes exporting during a partition), so the time fields are in UTC and
nothing depends on the node doing the rendering. Values from the call (numbers, ids)
are sanitised before they reach the template, so a caller id can never add a
directory or climb out of the target.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from contracts.v1.events import RecordingCompleted, RecordingMetadata

EXTENSIONS = {"opus": "opus", "wav": "wav", "mp3": "mp3"}
FIELDS = ("date", "start", "near", "far", "id", "ext", "node", "duration")
UNKNOWN = "-"
_UNSAFE = re.compile(r"[^A-Za-z0-9+@=,._-]")
TEMP_MARK = ".tmp-"
"""Temporary files are `.<final name>.tmp-<node>-<pid>`: hidden, and findable for cleanup."""


class TemplateError(ValueError):
    """The path template cannot be rendered (unknown field, bad format spec, empty path)."""


def sanitize(value: str, max_len: int = 80) -> str:
    """A file-name-safe token: unsafe characters become '_', never empty, never hidden."""
    cleaned = _UNSAFE.sub("_", value.strip())[:max_len]
    if not cleaned:
        return UNKNOWN
    if cleaned.startswith("."):
        cleaned = "_" + cleaned[1:]
    return cleaned


def near_far(meta: RecordingMetadata) -> tuple[str, str]:
    """CUCM near/far end, SIPREC caller/callee; '-' when unknown."""
    by_role: dict[str, str] = {}
    for participant in meta.participants:
        if participant.number and participant.role not in by_role:
            by_role[participant.role] = participant.number
    near = by_role.get("near") or by_role.get("caller") or UNKNOWN
    far = by_role.get("far") or by_role.get("callee") or UNKNOWN
    return sanitize(near), sanitize(far)


def template_fields(recording: RecordingCompleted, fmt: str) -> dict[str, Any]:
    start = recording.started_at.astimezone(UTC)
    near, far = near_far(recording.metadata)
    return {
        "date": start,
        "start": start,
        "near": near,
        "far": far,
        "id": sanitize(recording.recording_id),
        "ext": EXTENSIONS[fmt],
        "node": sanitize(recording.node_id),
        "duration": round(recording.duration_ms / 1000),
    }


class _Formatter(string.Formatter):
    """str.format without attribute or index access (`{id.__class__}`), known names only."""

    def get_field(
        self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> tuple[Any, str]:
        if field_name not in kwargs:
            raise TemplateError(
                f"unknown field {{{field_name}}} in path template (use {', '.join(FIELDS)})"
            )
        return kwargs[field_name], field_name


_FORMATTER = _Formatter()


def _clean_segment(segment: str) -> str:
    if segment in (".", ".."):
        return "_"
    return sanitize(segment, max_len=200)


def render_path(template: str, recording: RecordingCompleted, fmt: str) -> str:
    """Relative, '/'-separated path of the exported audio file below the target."""
    try:
        rendered = _FORMATTER.format(template, **template_fields(recording, fmt))
    except TemplateError:
        raise
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise TemplateError(f"path template {template!r}: {exc}") from exc
    segments = [_clean_segment(s) for s in rendered.split("/") if s.strip()]
    if not segments:
        raise TemplateError(f"path template {template!r} renders an empty path")
    return "/".join(segments)


def sidecar_path(audio_path: str, fmt: str) -> str:
    """The metadata file next to the audio: its extension replaced by `.json`."""
    suffix = "." + EXTENSIONS[fmt]
    base = audio_path[: -len(suffix)] if audio_path.endswith(suffix) else audio_path
    return base + ".json"


SAMPLE = RecordingCompleted(
    node_id="node",
    recording_id="0" * 32,
    started_at=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    ended_at=datetime(2024, 1, 2, 3, 5, 5, tzinfo=UTC),
    duration_ms=60000,
    object_key="sample.opus",
    size_bytes=1,
    sha256="0" * 64,
    channels=[],
    metadata=RecordingMetadata(source="cucm", session_key="sample"),
)


def check_template(template: str, fmt: str) -> str | None:
    """The error a template would give, checked before a run touches anything."""
    try:
        render_path(template, SAMPLE, fmt)
    except TemplateError as exc:
        return str(exc)
    return None


def pending_exports(
    recordings: Sequence[RecordingCompleted], exported: Mapping[str, str], target_dir: str
) -> list[RecordingCompleted]:
    """What an export job still has to write, oldest call first. A recording counts as
    done when it was exported below the job's current target (a moved target starts over)."""
    prefix = target_dir.rstrip("/") + "/"
    todo = [
        rec for rec in recordings
        if not exported.get(rec.recording_id, "").startswith(prefix)
    ]
    return sorted(todo, key=lambda rec: (rec.started_at, rec.recording_id))
