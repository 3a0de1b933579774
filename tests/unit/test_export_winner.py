"""Export and one recording per call: a call exported as a peer's interrupted copy is
exported again, once, when the origin's better copy replaces it."""

from __future__ import annotations

import json
from pathlib import Path

from callrec.audio import encode_opus_stereo, tone
from contracts.v1.events import RecordingCompleted, RecordingExported
from tests.unit.test_jobs_runs import Harness, export_job


def copies(h: Harness) -> tuple[RecordingCompleted, RecordingCompleted]:
    """The origin's copy of call r1 and b's shorter takeover copy, both in the store,
    neither applied yet."""
    origin = h.add_recording("r1")
    h.engine.book.recordings.pop("r1")
    h.engine.book.completions.clear()
    h.engine.book.seen.discard(origin.event_id)
    takeover = origin.model_copy(update={
        "event_id": "b" * 32, "node_id": "b", "duration_ms": 600, "interrupted": True,
        "object_key": "2024/05/01/r1.b.interrupted.ogg"})
    path = h.store.root / takeover.object_key
    encode_opus_stereo(tone(440, 0.2, 16000), tone(880, 0.2, 16000), 16000, path)
    return origin, takeover.model_copy(update={"size_bytes": path.stat().st_size})


async def test_replaced_recording_is_exported_again_and_the_loser_removed(
        tmp_path: Path) -> None:
    h = Harness(tmp_path)
    target = tmp_path / "share"
    target.mkdir()
    origin, takeover = copies(h)
    # b's takeover copy, shorter, made while a was silent: the only copy for now.
    h.engine.apply(takeover)
    # {node} in the template: the two copies render different paths.
    job = export_job(target, "opus")
    job = job.model_copy(update={"export": job.export.model_copy(update={  # type: ignore[union-attr]
        "path_template": "{id}_{node}.{ext}"})})
    h.configure(job)
    h.hold_role()
    assert h.engine.start_run("exp", "request")
    await h.idle()
    first = h.of(RecordingExported)
    assert [e.path for e in first] == [str(target / "r1_b.opus")]  # type: ignore[attr-defined]
    # The origin's longer copy arrives: the next run exports it once, the loser goes.
    h.engine.apply(origin)
    h.engine.start_run("exp", "schedule")
    await h.idle()
    exports = h.of(RecordingExported)
    assert [e.path for e in exports] == [str(target / "r1_b.opus"),  # type: ignore[attr-defined]
                                         str(target / "r1_n1.opus")]
    assert sorted(p.name for p in target.iterdir()) == ["r1_n1.json", "r1_n1.opus"]
    assert json.loads((target / "r1_n1.json").read_text())["event_id"] == origin.event_id
    # Settled: further runs export nothing, and a late loser changes nothing.
    h.engine.apply(takeover)
    h.engine.start_run("exp", "schedule")
    await h.idle()
    assert len(h.of(RecordingExported)) == 2


async def test_same_path_is_rewritten_in_place(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    target = tmp_path / "share"
    target.mkdir()
    origin, takeover = copies(h)
    h.engine.apply(takeover)
    h.configure(export_job(target, "opus"))
    h.hold_role()
    h.engine.start_run("exp", "request")
    await h.idle()
    h.engine.apply(origin)
    h.engine.start_run("exp", "schedule")
    await h.idle()
    exports = h.of(RecordingExported)
    assert len(exports) == 2 and exports[0].path == exports[1].path  # type: ignore[attr-defined]
    sidecar = Path(exports[1].path).with_suffix(".json")  # type: ignore[attr-defined]
    assert json.loads(sidecar.read_text())["event_id"] == origin.event_id
