"""The recording page and its API over a fake backend (services/web/recording_page.py,
media.py): waveform stored or computed once, downloads as Opus, WAV and MP3 (decodable,
right duration, Range), notes and tags published as facts and waited for, and every
route refusing another user's recording exactly like an unknown one."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from litestar.testing import TestClient

from callrec import waveform as waveform_module
from callrec.audio import dominant_frequency, encode_opus_stereo, tone
from callrec.store import open_store
from callrec.waveform import compute_peaks, decode_peaks
from contracts.v1.events import (
    ChannelSummary,
    Participant,
    RecordingCompleted,
    RecordingMetadata,
    RecordingNoteAdded,
    RecordingTagChanged,
)
from contracts.v1.rpc import Annotations, Note, Waveform
from services.web.app import create_app
from services.web.recording_page import party_kind
from tests.unit.test_web_jobs_api import ADMIN, ALICE, FakeBackend, recording

RATE = 16000
SECONDS = 3.0


class Backend(FakeBackend):
    """The fake backend with a catalog of peaks and annotations fed by what is published."""

    def __init__(self) -> None:
        super().__init__()
        self.stored: dict[str, Waveform] = {}
        self.notes: dict[str, list[Note]] = {}
        self.tags: dict[str, set[str]] = {}
        self.catalog_applies = True

    async def waveform(self, recording_id: str) -> Waveform | None:
        return self.stored.get(recording_id)

    async def annotations(self, recording_id: str) -> Annotations:
        return Annotations(recording_id=recording_id, notes=self.notes.get(recording_id, []),
                           tags=sorted(self.tags.get(recording_id, set())))

    async def annotate(self, event: RecordingNoteAdded | RecordingTagChanged) -> bool:
        self.published.append(event)
        if not self.catalog_applies:
            return False
        if isinstance(event, RecordingNoteAdded):
            self.notes.setdefault(event.recording_id, []).append(Note(
                note_id=event.note_id, author=event.author, at=event.occurred_at,
                text=event.text))
        elif event.added:
            self.tags.setdefault(event.recording_id, set()).add(event.tag)
        else:
            self.tags.setdefault(event.recording_id, set()).discard(event.tag)
        return True


def stored_recording(store_dir: Path, rid: str, number: str) -> RecordingCompleted:
    """A real Ogg/Opus in the store: 440 Hz on the left, silence then 1 kHz on the right."""
    left = tone(440, SECONDS, RATE, amplitude=0.4)
    right = tone(1000, SECONDS, RATE, amplitude=0.4)
    right[: RATE] = 0
    source = store_dir / f"{rid}.src.opus"
    encode_opus_stereo(left, right, RATE, source)
    store = open_store(store_dir)
    key = f"recordings/{rid}.opus"
    sha = store.put_file(key, source)
    base = recording(rid, number)
    return base.model_copy(update={
        "object_key": key, "sha256": sha, "duration_ms": int(SECONDS * 1000),
        "size_bytes": source.stat().st_size,
        "metadata": RecordingMetadata(
            source="cucm", session_key=rid, direction="inbound", recorded_extension=number,
            user_agent="Cisco-CUCM14.0",
            participants=[
                Participant(role="near", number=number, name="Alice Agent", channel=0,
                            device="SEP0011223344"),
                Participant(role="far", number="+4930123456",
                            name="<script>alert('x')</script>", channel=1),
            ]),
        "channels": [
            ChannelSummary(channel=0, stream_id="near", port=20000, packets_received=150,
                           packets_lost=2, codecs=["PCMU"]),
            ChannelSummary(channel=1, stream_id="far", port=20002, silent_reason="no_packets"),
        ],
    })


@pytest.fixture
def backend(tmp_path: Path) -> Backend:
    backend = Backend()
    backend.recordings = {
        "rec1": stored_recording(tmp_path, "rec1", "1001"),
        "rec2": stored_recording(tmp_path, "rec2", "3003"),
    }
    return backend


@pytest.fixture
def client(backend: Backend, tmp_path: Path) -> Iterator[TestClient[Any]]:
    app = create_app(backend, open_store(tmp_path), tmp_path)
    with TestClient(app=app) as test_client:
        yield test_client


def lanes(body: dict[str, Any]) -> np.ndarray:
    data = decode_peaks(Waveform.model_validate(body).peaks).astype(np.int32)
    return data[:, :, 1] - data[:, :, 0]


# --------------------------------------------------------------------------- waveform


def test_stored_peaks_are_served_as_the_catalog_has_them(
    client: TestClient[Any], backend: Backend
) -> None:
    pcm = np.zeros((2, RATE), dtype=np.int16)
    pcm[1] = tone(1000, 1.0, RATE)
    stored = Waveform(recording_id="rec1", duration_ms=1000, peaks=compute_peaks(pcm, RATE))
    backend.stored["rec1"] = stored
    response = client.get("/api/recordings/rec1/waveform", auth=ALICE)
    assert response.status_code == 200, response.text
    assert response.json() == stored.model_dump(mode="json")
    assert response.json()["source"] == "stored"


def test_without_stored_peaks_the_web_computes_them_once_and_caches_them_0600(
    client: TestClient[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    real = waveform_module.peaks_of_file

    def counting(path: Path, rate: int = 16000) -> Any:
        calls.append(path)
        return real(path, rate)

    monkeypatch.setattr(waveform_module, "peaks_of_file", counting)
    first = client.get("/api/recordings/rec1/waveform", auth=ADMIN)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["source"] == "computed" and abs(body["duration_ms"] - 3000) <= 30
    height = lanes(body)
    assert (height[0][5:-5] > 80).all()  # the 440 Hz tone, left lane, all along
    assert (height[1][:45] <= 2).all() and (height[1][55:-5] > 80).all()  # right from 1 s
    again = client.get("/api/recordings/rec1/waveform", auth=ADMIN)
    assert again.json() == body and len(calls) == 1
    [cached] = (tmp_path / "cache" / "waveform").glob("rec1.*.json")
    assert cached.stat().st_mode & 0o777 == 0o600


def test_waveform_of_audio_missing_on_this_node_is_404(
    client: TestClient[Any], backend: Backend
) -> None:
    backend.recordings["rec3"] = recording("rec3", "1001")  # no object in the store
    response = client.get("/api/recordings/rec3/waveform", auth=ADMIN)
    assert response.status_code == 404
    assert "not available" in response.json()["detail"]


# --------------------------------------------------------------------------- downloads


@pytest.mark.parametrize(("fmt", "media_type", "extension"), [
    ("opus", "audio/ogg", "opus"), ("ogg", "audio/ogg", "ogg"),
    ("wav", "audio/wav", "wav"), ("mp3", "audio/mpeg", "mp3"),
])
def test_downloads_decode_with_the_right_duration_and_honour_ranges(
    client: TestClient[Any], fmt: str, media_type: str, extension: str
) -> None:
    response = client.get("/api/recordings/rec1/audio",
                          params={"format": fmt, "download": "true"}, auth=ALICE)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(media_type)
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment;") and disposition.endswith(f'.{extension}"')
    assert response.headers["accept-ranges"] == "bytes"
    with av.open(io.BytesIO(response.content)) as container:
        frames = [f.to_ndarray() for f in container.decode(container.streams.audio[0])]
        rate = container.streams.audio[0].codec_context.sample_rate
        channels = container.streams.audio[0].codec_context.channels
    samples = sum(f.shape[-1] if f.shape[0] == channels else f.shape[-1] // channels
                  for f in frames)
    assert channels == 2
    assert abs(samples / rate - SECONDS) <= 0.1, samples / rate
    left = np.concatenate([f[0] if f.shape[0] == channels else f[0][0::2] for f in frames])
    assert abs(dominant_frequency(left.astype(np.float64), rate) - 440) < 10
    size = len(response.content)
    part = client.get("/api/recordings/rec1/audio", params={"format": fmt},
                      headers={"Range": "bytes=100-199"}, auth=ALICE)
    assert part.status_code == 206 and part.content == response.content[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{size}"


def test_an_unknown_format_is_refused(client: TestClient[Any]) -> None:
    response = client.get("/api/recordings/rec1/audio", params={"format": "flac"}, auth=ALICE)
    assert response.status_code == 400


# --------------------------------------------------------------------------- notes and tags


def test_admin_adds_a_note_and_tags_as_facts_and_sees_them_next(
    client: TestClient[Any], backend: Backend
) -> None:
    response = client.post("/api/recordings/rec1/notes", json={"text": "Customer <b>angry</b>"},
                           auth=ADMIN)
    assert response.status_code == 201, response.text
    assert response.json()["applied_locally"] is True
    [note] = backend.published
    assert isinstance(note, RecordingNoteAdded)
    assert (note.recording_id, note.author, note.text) == ("rec1", "admin",
                                                          "Customer <b>angry</b>")
    added = client.put("/api/recordings/rec1/tags/Follow%20%20Up", auth=ADMIN)
    assert added.status_code == 200, added.text
    tag_event = backend.published[-1]
    assert isinstance(tag_event, RecordingTagChanged)
    assert (tag_event.tag, tag_event.added, tag_event.changed_by) == ("follow up", True, "admin")
    shown = client.get("/api/recordings/rec1/annotations", auth=ADMIN).json()
    assert shown["tags"] == ["follow up"] and shown["may_annotate"] is True
    assert [n["text"] for n in shown["notes"]] == ["Customer <b>angry</b>"]
    removed = client.delete("/api/recordings/rec1/tags/follow%20up", auth=ADMIN)
    assert removed.status_code == 200 and removed.json()["added"] is False
    assert client.get("/api/recordings/rec1/annotations", auth=ADMIN).json()["tags"] == []


def test_a_change_the_catalog_does_not_show_in_time_is_stored_and_said(
    client: TestClient[Any], backend: Backend
) -> None:
    backend.catalog_applies = False
    response = client.put("/api/recordings/rec1/tags/urgent", auth=ADMIN)
    assert response.status_code == 200 and response.json()["applied_locally"] is False
    assert len(backend.published) == 1


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("POST", "/api/recordings/rec1/notes", {"text": ""}, 400),
    ("POST", "/api/recordings/rec1/notes", {"text": "   \n "}, 400),
    ("POST", "/api/recordings/rec1/notes", {"text": "x" * 4001}, 400),
    ("POST", "/api/recordings/rec1/notes", {"text": "hi", "author": "mallory"}, 400),
    ("POST", "/api/recordings/rec1/notes", [1, 2], 400),
    ("PUT", "/api/recordings/rec1/tags/" + "x" * 65, None, 400),
    ("PUT", "/api/recordings/rec1/tags/%20%20", None, 400),
    ("PUT", "/api/recordings/rec1/tags/a%2Fb", None, 404),  # a '/' does not route at all
    ("PUT", "/api/recordings/rec1/tags/a%07b", None, 400),
])
def test_bad_annotations_are_a_clear_400_and_publish_nothing(
    client: TestClient[Any], backend: Backend, method: str, path: str, body: Any, status: int
) -> None:
    response = client.request(method, path, json=body, auth=ADMIN)
    assert response.status_code == status, response.text
    assert backend.published == []


def test_a_note_must_be_json(client: TestClient[Any], backend: Backend) -> None:
    response = client.post("/api/recordings/rec1/notes", content=b"text=hi", auth=ADMIN,
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415 and backend.published == []


def test_a_user_plays_but_does_not_annotate(client: TestClient[Any], backend: Backend) -> None:
    shown = client.get("/api/recordings/rec1/annotations", auth=ALICE).json()
    assert shown["may_annotate"] is False
    for method, path, body in [("POST", "/api/recordings/rec1/notes", {"text": "hi"}),
                               ("PUT", "/api/recordings/rec1/tags/x", None),
                               ("DELETE", "/api/recordings/rec1/tags/x", None)]:
        response = client.request(method, path, json=body, auth=ALICE)
        assert response.status_code == 403, (method, path, response.text)
    assert backend.published == []


# --------------------------------------------------------------------------- visibility


def test_another_users_recording_is_unknown_on_every_route(
    client: TestClient[Any], backend: Backend
) -> None:
    """Alice (1001) and rec2 (3003): every per-recording route of the app answers 404 for
    rec2 as for an id that does not exist, and says nothing more."""
    app = client.app
    checked = 0
    for route in app.routes:
        path = getattr(route, "path", "")
        if "{recording_id" not in path:
            continue
        for handler in getattr(route, "route_handlers", []):
            for method in sorted(handler.http_methods):
                if method in ("HEAD", "OPTIONS"):
                    continue
                url = path.replace("{recording_id:str}", "{rid}").replace("{tag:str}", "x")
                answers = []
                for rid in ("rec2", "nope"):
                    response = client.request(method, url.format(rid=rid), auth=ALICE,
                                              json={"text": "t"} if method == "POST" else None)
                    answers.append((response.status_code, response.content))
                own = answers[0][0]
                assert own in (403, 404), (method, url, answers)  # 403: admin-only routes
                if own == 404:
                    assert answers[0] == answers[1], (method, url, answers)
                checked += 1
    assert checked >= 10
    assert backend.published == []


# --------------------------------------------------------------------------- the page


def test_the_page_shows_parties_sides_warnings_and_escapes_what_callers_send(
    client: TestClient[Any],
) -> None:
    response = client.get("/recordings/rec1", auth=ALICE)
    assert response.status_code == 200, response.text
    html = response.text
    for testid in ("player", "waveform-0", "waveform-1", "parties", "packet-stats",
                   "download-opus", "download-wav", "download-mp3", "tags", "notes",
                   "warnings", "direction"):
        assert f'data-testid="{testid}"' in html, testid
    assert "Agent (recorded)" in html and "Customer" in html and "Alice Agent" in html
    assert "Silent far end channel (far): no audio arrived." in html
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#39;x&#39;)" in html
    assert "<script>" not in html.replace('<script src="/static/app.js" defer></script>', "") \
        .replace('<script src="/static/recording.js" defer></script>', "")
    assert 'data-may-annotate="false"' in html and 'data-testid="hold-toggle"' not in html
    admin = client.get("/recordings/rec1", auth=ADMIN).text
    assert 'data-may-annotate="true"' in admin and 'data-testid="hold-toggle"' in admin
    assert client.get("/recordings/rec2", auth=ALICE).status_code == 404
    assert client.get("/recordings/nope", auth=ADMIN).status_code == 404
    assert client.get("/static/recording.js").status_code == 200


def test_who_is_the_agent_and_who_the_customer() -> None:
    meta = RecordingMetadata(source="siprec", session_key="s", direction="outbound",
                             recorded_extension="2002")
    caller = Participant(role="caller", number="2002")
    callee = Participant(role="callee", number="+3312345")
    assert party_kind(caller, meta) == "agent" and party_kind(callee, meta) == "customer"
    internal = RecordingMetadata(source="cucm", session_key="s", direction="internal")
    assert party_kind(Participant(role="near", number="1"), internal) == "agent"
    assert party_kind(Participant(role="far", number="2"), internal) == "other"
