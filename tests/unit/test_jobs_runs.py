"""Job runs without NATS: the engine with a loop-back publisher and a real file store."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from callrec.audio import decode_file, encode_opus_stereo, tone
from callrec.store import FileStore
from contracts.v1.events import (
    EventBase,
    ExportParams,
    JobConfigured,
    JobRunFailed,
    JobRunFinished,
    JobRunRequested,
    JobRunStarted,
    JobSchedule,
    LegalHoldChanged,
    Participant,
    PurgeParams,
    RecordingCompleted,
    RecordingExported,
    RecordingMetadata,
    RecordingPurged,
)
from services.scheduler.engine import JobEngine
from services.scheduler.exportio import (
    TargetUnavailable,
    _remove_temps,
    _write_atomic,
    export_recording,
)
from services.scheduler.jobs import exported_event_id, purged_event_id, requested_run_id

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class Harness:
    def __init__(self, tmp: Path, node: str = "n1") -> None:
        self.store = FileStore(tmp / "objects")
        self.events: list[EventBase] = []
        self.now = T0 + timedelta(hours=1)
        self.engine = JobEngine(node, self.store, self.publish, retry_s=3600,
                                now=lambda: self.now)

    async def publish(self, event: EventBase) -> None:
        self.events.append(event)
        self.engine.apply(event)

    def of(self, kind: type[EventBase]) -> list[EventBase]:
        return [e for e in self.events if isinstance(e, kind)]

    def add_recording(self, rid: str, minutes: int = 0, local: bool = True) -> RecordingCompleted:
        key = f"2024/05/01/{rid}.ogg"
        path = self.store.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        encode_opus_stereo(tone(440, 0.3, 16000), tone(880, 0.3, 16000), 16000, path)
        size = path.stat().st_size
        if not local:
            path.unlink()
        started = T0 + timedelta(minutes=minutes)
        recording = RecordingCompleted(
            node_id="n1", recording_id=rid, started_at=started,
            ended_at=started + timedelta(seconds=1), duration_ms=1000, object_key=key,
            size_bytes=size, sha256="0" * 64, channels=[],
            metadata=RecordingMetadata(source="cucm", session_key=rid, participants=[
                Participant(role="near", number="1001"), Participant(role="far", number="2002")]),
        )
        self.engine.apply(recording)
        return recording

    def configure(self, job: JobConfigured) -> None:
        self.engine.apply(job)

    def hold_role(self) -> None:
        self.engine.set_ready()
        self.engine.set_role(self.engine.me, 1)

    async def idle(self) -> None:
        for _ in range(200):
            tasks = [h.task for h in self.engine.running.values() if h.task is not None]
            if not tasks:
                return
            await asyncio.gather(*tasks, return_exceptions=True)
        raise AssertionError("runs never ended")


def export_job(target: Path, fmt: str = "wav", job_id: str = "exp") -> JobConfigured:
    return JobConfigured(node_id="n1", job_id=job_id, name=job_id, kind="export",
                         schedule=JobSchedule(), export=ExportParams(
                             target_dir=str(target), format=fmt,  # type: ignore[arg-type]
                             path_template="{date:%Y/%m/%d}/{start:%H%M%S}_{near}_{far}_{id}.{ext}"))


def purge_job(retention_s: int = 60) -> JobConfigured:
    return JobConfigured(node_id="n1", job_id="pur", name="pur", kind="purge",
                         schedule=JobSchedule(), purge=PurgeParams(retention_s=retention_s))


async def test_export_writes_files_sidecars_and_continues(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    target = tmp_path / "share"
    target.mkdir()
    first = [h.add_recording(f"r{i}", minutes=i) for i in range(3)]
    h.add_recording("remote", minutes=9, local=False)
    h.configure(export_job(target))
    h.hold_role()
    assert h.engine.start_run("exp", "request")
    await h.idle()
    exported = h.of(RecordingExported)
    assert [e.recording_id for e in exported] == ["r0", "r1", "r2"]  # type: ignore[attr-defined]
    assert exported[0].event_id == exported_event_id("exp", "r0", first[0].event_id)
    finished = h.of(JobRunFinished)[-1]
    assert (finished.processed, finished.skipped) == (3, 1)  # type: ignore[attr-defined]
    audio = target / "2024/05/01/120100_1001_2002_r1.wav"
    samples, rate = decode_file(audio)
    assert samples.shape[0] == 2 and rate == 16000
    sidecar = json.loads((target / "2024/05/01/120100_1001_2002_r1.json").read_text())
    assert sidecar["recording_id"] == "r1"
    assert sidecar["export"]["size_bytes"] == audio.stat().st_size
    assert not [p for p in target.rglob("*") if ".tmp-" in p.name]
    # The remote recording is replicated later: the next run exports only it.
    h.add_recording("remote", minutes=9)
    h.engine.start_run("exp", "schedule")
    await h.idle()
    assert [e.recording_id for e in h.of(RecordingExported)][3:] == ["remote"]  # type: ignore[attr-defined]
    assert h.engine.status().jobs[0].exported == 4


async def test_missing_target_fails_then_continues(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    target = tmp_path / "unmounted"
    h.add_recording("r0")
    h.configure(export_job(target, "mp3"))
    h.hold_role()
    h.engine.start_run("exp", "schedule")
    await h.idle()
    failed = h.of(JobRunFailed)
    assert failed and "does not exist" in failed[0].error  # type: ignore[attr-defined]
    assert not target.exists()  # never created: it is the mount point
    view = h.engine.status().jobs[0]
    assert view.last_runs[0].state == "failed" and h.engine.book.needs_resume("exp")
    target.mkdir()
    await h.engine._retry("exp")
    await h.idle()
    assert [e.recording_id for e in h.of(RecordingExported)] == ["r0"]  # type: ignore[attr-defined]
    samples, rate = decode_file(target / "2024/05/01/120000_1001_2002_r0.mp3")
    assert samples.shape[0] == 2 and samples.shape[1] >= 0.25 * rate


def test_existing_complete_file_is_reused_and_stale_temps_removed(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    rec = h.add_recording("r0")
    target = tmp_path / "share"
    target.mkdir()
    source = h.store.root / rec.object_key
    first = export_recording(source, target, "d/r0.opus", rec, "opus", True, "a")
    assert not first.reused and first.size == rec.size_bytes
    stale = target / "d" / ".r0.opus.tmp-a-123"
    stale.write_bytes(b"half")
    again = export_recording(source, target, "d/r0.opus", rec, "opus", True, "b")
    assert again.reused and again.path == first.path
    assert not stale.exists()
    # Without a sidecar an opus copy is recognised by its size.
    assert export_recording(source, target, "d/r0.opus", rec, "opus", False, "b").reused
    with pytest.raises(TargetUnavailable):
        export_recording(source, tmp_path / "gone", "r0.opus", rec, "opus", True, "b")


async def test_purge_dry_run_then_purge_skips_held(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    for rid, minutes in (("old1", 0), ("old2", 1), ("held", 2), ("new", 59)):
        h.add_recording(rid, minutes)
    h.engine.apply(LegalHoldChanged(node_id="n1", recording_id="held", hold=True))
    h.configure(purge_job(retention_s=120))
    request = JobRunRequested(node_id="n2", job_id="pur", dry_run=True)
    await h.publish(request)
    assert not h.engine.running  # nobody holds the role: the request waits
    h.hold_role()
    await h.idle()
    assert not h.of(RecordingPurged)
    dry = h.of(JobRunFinished)[-1]
    assert dry.would_purge == ["old1", "old2"]  # type: ignore[attr-defined]
    assert dry.run_id == requested_run_id(request.event_id)  # type: ignore[attr-defined]
    h.engine.start_run("pur", "request")
    await h.idle()
    purged = h.of(RecordingPurged)
    assert [e.recording_id for e in purged] == ["old1", "old2"]  # type: ignore[attr-defined]
    assert purged[0].event_id == purged_event_id("old1")
    assert h.of(JobRunFinished)[-1].processed == 2  # type: ignore[attr-defined]


async def test_takeover_resumes_unfinished_run_and_role_loss_stops(tmp_path: Path) -> None:
    h = Harness(tmp_path, node="b")
    target = tmp_path / "share"
    target.mkdir()
    for i in range(60):
        h.add_recording(f"r{i:02d}", minutes=i)
    h.configure(export_job(target, "opus"))
    h.engine.apply(JobRunStarted(node_id="a", job_id="exp", run_id="dead"))
    for i in range(10):  # what the dead primary had exported
        h.engine.apply(RecordingExported(node_id="a", job_id="exp", run_id="dead",
                                         recording_id=f"r{i:02d}", path=f"{target}/x{i}",
                                         size_bytes=1))
    h.engine.set_ready()
    h.engine.set_role("a", 1)
    assert not h.engine.running
    h.engine.set_role("b", 2)  # a died: b takes the role and resumes
    while not h.of(JobRunStarted):
        await asyncio.sleep(0.01)
    started = h.of(JobRunStarted)
    assert started[0].trigger == "resume" and started[0].role_epoch == 2  # type: ignore[attr-defined]
    assert not h.engine.start_run("exp", "schedule")  # never twice at once
    while len(h.of(RecordingExported)) < 5:
        await asyncio.sleep(0.01)
    h.engine.set_role("a", 3)  # a is back and takes the role back
    await h.idle()
    failed = h.of(JobRunFailed)
    assert failed and failed[0].error.startswith("interrupted")  # type: ignore[attr-defined]
    ids = [e.recording_id for e in h.of(RecordingExported)]  # type: ignore[attr-defined]
    assert ids[0] == "r10" and len(ids) < 50


def test_peer_finishing_first_wins_without_error(tmp_path: Path) -> None:
    """Partition: a peer renames the same file first and removes our temporary file."""
    final = tmp_path / "r0.opus"

    def write_then_lose_race(temp: Path) -> None:
        temp.write_bytes(b"ours")
        final.write_bytes(b"theirs")  # the peer's rename
        _remove_temps(final)  # the peer's cleanup of leftovers

    assert _write_atomic(final, "b", write_then_lose_race) is False
    assert final.read_bytes() == b"theirs" and list(tmp_path.iterdir()) == [final]
    assert _write_atomic(final, "b", lambda temp: temp.write_bytes(b"ours")) is True
    assert final.read_bytes() == b"ours" and list(tmp_path.iterdir()) == [final]


async def test_schedules_follow_configuration(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.engine.start()
    try:
        job = purge_job().model_copy(update={"schedule": JobSchedule(interval_s=3600)})
        h.configure(job)
        scheduled = h.engine.scheduler.get_job("job:pur")
        assert scheduled is not None
        assert h.engine.status().jobs[0].next_run == scheduled.next_run_time
        h.configure(job.model_copy(update={"event_id": "2", "paused": True}))
        assert h.engine.scheduler.get_job("job:pur") is None
        assert h.engine.status().jobs[0].next_run is None
    finally:
        await h.engine.shutdown()


async def test_purge_skips_recording_held_during_run_and_a_void_purge_is_not_reissued(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    for rid, minutes in (("old1", 0), ("old2", 1), ("old3", 2)):
        h.add_recording(rid, minutes)
    wall = datetime.now(UTC)
    put_on_hold = LegalHoldChanged(node_id="n2", recording_id="old2", hold=True,
                                   occurred_at=wall - timedelta(minutes=3))
    publish = h.publish

    async def hold_after_first_purge(event: EventBase) -> None:
        await publish(event)
        if isinstance(event, RecordingPurged) and event.recording_id == "old1":
            h.engine.apply(put_on_hold)  # the hold reaches the role holder mid-run

    h.engine.publish = hold_after_first_purge
    h.configure(purge_job(retention_s=120))
    h.hold_role()
    h.engine.start_run("pur", "request")
    await h.idle()
    assert [e.recording_id for e in h.of(RecordingPurged)] == ["old1", "old3"]  # type: ignore[attr-defined]
    finished = h.of(JobRunFinished)[-1]
    assert (finished.processed, finished.skipped) == (2, 1)  # type: ignore[attr-defined]
    # A forged purge of the held recording: the book keeps it, the next run skips it.
    forged = RecordingPurged(node_id="x", recording_id="old2", object_key="k", reason="forged",
                             occurred_at=wall - timedelta(minutes=2))
    h.engine.apply(forged)
    assert [r.recording_id for r in h.engine.book.live_recordings()] == ["old2"]
    h.engine.start_run("pur", "request")
    await h.idle()
    assert len(h.of(RecordingPurged)) == 2
    # Released: the next run purges it with a new fact, not the id of a voided one.
    release = LegalHoldChanged(node_id="n2", recording_id="old2", hold=False,
                               occurred_at=wall - timedelta(minutes=1))
    h.engine.apply(release)
    h.engine.start_run("pur", "request")
    await h.idle()
    last = h.of(RecordingPurged)[-1]
    assert last.recording_id == "old2"  # type: ignore[attr-defined]
    assert last.event_id == purged_event_id("old2", release.event_id) != purged_event_id("old2")
    assert h.engine.book.live_recordings() == []
