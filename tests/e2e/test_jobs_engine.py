"""Maintenance jobs on real nodes, driven by events published straight to a node's
JetStream: purge with legal hold (and a dry run), export with a failover in the
middle, export to a missing (unmounted) target that fails and then catches up."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from callrec import bus
from callrec.audio import decode_file
from contracts import subjects
from contracts.v1.events import (
    EventBase,
    ExportParams,
    JobConfigured,
    JobRunRequested,
    JobSchedule,
    LegalHoldChanged,
    PurgeParams,
    parse_event,
)
from contracts.v1.rpc import Empty, JobRunView, JobsStatus
from tests.support import sipp
from tests.support.cluster import (
    ROLE_TIMEOUT,
    eventually,
    holder,
    record_call,
    recordings,
)
from tests.support.node import Node

pytestmark = pytest.mark.e2e

TEMPLATE = "{date:%Y/%m/%d}/{start:%H%M%S}_{near}_{far}_{id}.{ext}"


def publish(node: Node, *events: EventBase) -> None:
    async def go() -> None:
        nc = await node.bus()
        try:
            for event in events:
                await bus.publish_event(nc.jetstream(), event)
        finally:
            await nc.close()

    asyncio.run(go())


def cluster_events(node: Node, event_type: str) -> list[Any]:
    """Every `event_type` event in the node's CLUSTER stream (all nodes' facts)."""
    async def go() -> list[Any]:
        nc = await node.bus()
        try:
            sub = await nc.jetstream().subscribe(subjects.events_of_type(event_type),
                                                 stream=subjects.CLUSTER_STREAM,
                                                 ordered_consumer=True)
            found: list[Any] = []
            while True:
                try:
                    msg = await sub.next_msg(timeout=0.5)
                except TimeoutError:
                    return found
                found.append(parse_event(msg.data))
        finally:
            await nc.close()

    return asyncio.run(go())


def jobs_status(node: Node) -> JobsStatus:
    async def go() -> JobsStatus:
        nc = await node.bus()
        try:
            subject = subjects.rpc(node.node_id, subjects.SCHEDULER, subjects.SCHEDULER_JOBS)
            reply = await bus.call(nc, subject, Empty(), JobsStatus, timeout=5)
            assert reply is not None
            return reply
        finally:
            await nc.close()

    return asyncio.run(go())


def last_run(node: Node, job_id: str) -> JobRunView | None:
    for job in jobs_status(node).jobs:
        if job.job_id == job_id and job.last_runs:
            return job.last_runs[0]
    return None


def ended_run(node: Node, job_id: str, after: int = 0) -> JobRunView | None:
    """The newest run of a job once it has ended, provided the job has more than
    `after` runs (so an earlier run's end is not taken for this one's)."""
    for job in jobs_status(node).jobs:
        if job.job_id == job_id and len(job.last_runs) > after:
            run = job.last_runs[0]
            return run if run.state in ("finished", "failed") else None
    return None


def run_count(node: Node, job_id: str) -> int:
    return next((len(j.last_runs) for j in jobs_status(node).jobs if j.job_id == job_id), 0)


def export_job(node: Node, job_id: str, target: Path, fmt: str = "wav") -> JobConfigured:
    return JobConfigured(node_id=node.node_id, job_id=job_id, name=job_id, kind="export",
                         schedule=JobSchedule(cron="0 3 * * *"),
                         export=ExportParams(target_dir=str(target), path_template=TEMPLATE,
                                             format=fmt))  # type: ignore[arg-type]


def expected_path(target: Path, item: dict[str, Any], ext: str) -> Path:
    start = datetime.fromisoformat(item["started_at"]).astimezone(UTC)
    numbers = {p["role"]: p.get("number") or "-" for p in item["metadata"]["participants"]}
    near, far = numbers.get("near", "-"), numbers.get("far", "-")
    rid = item["recording_id"]
    return target / f"{start:%Y/%m/%d}/{start:%H%M%S}_{near}_{far}_{rid}.{ext}"


def at_least(node: Node, count: int) -> dict[str, dict[str, Any]] | None:
    """The node's catalog once it lists at least `count` recordings."""
    items = recordings(node)
    return items if len(items) >= count else None


def finished_with(node: Node, job_id: str, after: int, processed: int) -> JobRunView | None:
    run = ended_run(node, job_id, after)
    return run if run is not None and run.processed == processed else None


def finished_on(node: Node, job_id: str) -> JobRunView | None:
    run = last_run(node, job_id)
    ok = run is not None and run.node_id == node.node_id and run.state == "finished"
    return run if ok else None


def objects_present(node: Node, items: dict[str, dict[str, Any]]) -> bool:
    return all((node.data_dir / "objects" / i["object_key"]).is_file() for i in items.values())


def temp_files(target: Path) -> list[Path]:
    return [p for p in target.rglob("*") if ".tmp-" in p.name]


def test_purge_respects_retention_and_legal_hold(pair: tuple[Node, Node]) -> None:
    a, b = pair
    eventually(lambda: holder(a) == "a" and holder(b) == "a", 15, "a holds the role")
    ids = [record_call(a, f"510000{i}", near=f"100{i}") for i in range(3)]
    items = eventually(lambda: at_least(b, 3), 15, "recordings on b")
    assert set(items) == set(ids)
    eventually(lambda: objects_present(b, items), 15, "objects replicated to b")
    held = ids[1]
    publish(a, LegalHoldChanged(node_id="a", recording_id=held, hold=True, reason="case 42"),
            JobConfigured(node_id="a", job_id="purge", name="retention", kind="purge",
                          schedule=JobSchedule(interval_s=3600),
                          purge=PurgeParams(retention_s=8)))
    time.sleep(8.5)  # past the retention of the three calls
    fresh = record_call(a, "5100009", near="1009")  # well within its retention
    eventually(lambda: fresh in recordings(b), 15, "fresh recording on b")

    publish(b, JobRunRequested(node_id="b", job_id="purge", dry_run=True))  # asked on b
    dry = eventually(lambda: ended_run(b, "purge"), 15, "dry run ended")
    assert dry.state == "finished" and dry.dry_run and dry.node_id == "a"
    assert sorted(dry.would_purge) == sorted([ids[0], ids[2]])
    assert set(recordings(a)) == set(recordings(b)) == {*ids, fresh}

    publish(a, JobRunRequested(node_id="a", job_id="purge"))
    for node in (a, b):
        eventually(lambda node=node: set(recordings(node)) == {held, fresh},  # type: ignore[misc]
                   15, f"purged on {node.node_id}")
        objects = node.data_dir / "objects"
        eventually(lambda objects=objects: not (objects / items[ids[0]]["object_key"]).exists()  # type: ignore[misc]
                   and not (objects / items[ids[2]]["object_key"]).exists(), 10,
                   f"objects deleted on {node.node_id}")
        assert (objects / items[held]["object_key"]).is_file()
    run = eventually(lambda: finished_with(b, "purge", 1, 2), 10, "purge run recorded on b")
    assert not run.dry_run and run.state == "finished"
    purged = cluster_events(b, "recording.purged")
    assert sorted(e.recording_id for e in purged) == sorted([ids[0], ids[2]])
    view = next(j for j in jobs_status(b).jobs if j.job_id == "purge")
    assert view.runs_on == "a" and view.next_run is not None and not view.paused


def test_export_then_failover_in_the_middle(pair: tuple[Node, Node], tmp_path: Path) -> None:
    a, b = pair
    eventually(lambda: holder(a) == "a" and holder(b) == "a", 15, "a holds the role")
    result = sipp.run_bulk_cucm_calls("127.0.0.1", a.sip_port, 40, rate=25, seconds=0.4)
    assert result.ok, result.describe()
    first = eventually(lambda: at_least(a, 40), 30, "40 recordings")

    target = tmp_path / "archive"
    target.mkdir()
    publish(a, export_job(a, "exp1", target), JobRunRequested(node_id="a", job_id="exp1"))
    run = eventually(lambda: ended_run(a, "exp1"), 60, "first export ended")
    assert run.state == "finished" and run.processed == 40, run
    seconds = (run.ended_at - run.started_at).total_seconds() if run.ended_at else 0
    print(f"exported 40 recordings as wav in {seconds:.2f}s ({40 / max(seconds, 1e-3):.0f}/s)")
    for item in first.values():
        audio = expected_path(target, item, "wav")
        samples, rate = decode_file(audio)
        assert samples.shape[0] == 2 and samples.shape[1] > 0 and rate == 16000
        sidecar = json.loads(audio.with_suffix(".json").read_text())
        assert sidecar["recording_id"] == item["recording_id"]
        assert sidecar["sha256"] == item["sha256"]
    assert not temp_files(target)

    # More history, all of it replicated to b; then a fresh export that a starts and
    # dies in the middle of.
    result = sipp.run_bulk_cucm_calls("127.0.0.1", a.sip_port, 160, rate=40, seconds=0.3,
                                      refci_prefix="8")
    assert result.ok, result.describe()
    every = eventually(lambda: at_least(a, 200), 60, "200 recordings")
    eventually(lambda: objects_present(b, every), 60, "all objects on b")
    target2 = tmp_path / "archive2"
    target2.mkdir()
    publish(a, export_job(a, "exp2", target2))
    eventually(lambda: any(j.job_id == "exp2" for j in jobs_status(b).jobs), 10, "b knows exp2")

    async def start_and_kill() -> int:
        nc = await a.bus()
        seen = asyncio.Event()
        count = 0

        async def on_exported(msg: Any) -> None:
            nonlocal count
            count += 1
            if count >= 20:
                seen.set()

        await nc.subscribe(subjects.event("a", "recording.exported"), cb=on_exported)
        await bus.publish_event(nc.jetstream(), JobRunRequested(node_id="a", job_id="exp2"))
        await asyncio.wait_for(seen.wait(), 30)
        a.kill()
        await nc.close()
        return count

    at_kill = asyncio.run(start_and_kill())
    assert at_kill < 200, "a finished before it was killed"
    eventually(lambda: holder(b) == "b", ROLE_TIMEOUT + 10, "b takes the role")
    done = eventually(lambda: finished_on(b, "exp2"), 60, "b finishes the export")
    assert done.trigger in ("resume", "request")
    view = next(j for j in jobs_status(b).jobs if j.job_id == "exp2")
    assert view.exported == 200 and view.runs_on == "b"
    assert done.processed < 200  # it continued, it did not start over

    for item in every.values():
        audio = expected_path(target2, item, "wav")
        assert audio.is_file() and audio.with_suffix(".json").is_file(), audio
    files = [p for p in target2.rglob("*") if p.is_file()]
    assert len(files) == 400, len(files)  # one audio file + one sidecar each, nothing else
    assert not temp_files(target2)
    event_ids: dict[str, set[str]] = defaultdict(set)
    for event in cluster_events(b, "recording.exported"):
        if event.job_id == "exp2":
            event_ids[event.recording_id].add(event.event_id)
    assert set(event_ids) == set(every)
    assert all(len(ids) == 1 for ids in event_ids.values())


def test_export_to_missing_target_fails_then_catches_up(tmp_path: Path) -> None:
    node = Node(tmp_path / "n", extra_args=["--record-all"]).start()
    try:
        result = sipp.run_bulk_cucm_calls("127.0.0.1", node.sip_port, 6, rate=10, seconds=0.3)
        assert result.ok, result.describe()
        items = eventually(lambda: at_least(node, 6), 30, "6 recordings")
        share = tmp_path / "mnt" / "share"
        publish(node, export_job(node, "exp", share, fmt="mp3"),
                JobRunRequested(node_id="n1", job_id="exp"))
        failed = eventually(lambda: ended_run(node, "exp"), 30, "export failed")
        assert failed.state == "failed" and failed.error and "does not exist" in failed.error
        assert not share.exists()  # the mount point is never created
        events = cluster_events(node, "job.run_failed")
        assert [e.job_id for e in events] == ["exp"]

        share.mkdir(parents=True)
        publish(node, JobRunRequested(node_id="n1", job_id="exp"))
        run = eventually(lambda: ended_run(node, "exp", after=1), 30, "export after mount")
        assert run.state == "finished" and run.processed == 6, run
        for item in items.values():
            audio = expected_path(share, item, "mp3")
            samples, _ = decode_file(audio)
            assert samples.shape[1] > 0
        assert next(j for j in jobs_status(node).jobs if j.job_id == "exp").exported == 6
    finally:
        node.stop()
