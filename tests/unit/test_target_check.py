"""The export target is checked by the node that holds the maintenance role (the one
that writes exports): once per definition and again by each new holder, stated as a
`job.target_checked` fact every node shows."""

from __future__ import annotations

import asyncio
from pathlib import Path

from contracts.v1.events import JobTargetChecked
from services.scheduler.jobs import needs_target_check
from tests.unit.test_jobs_runs import Harness, export_job, purge_job


def checks(h: Harness) -> list[JobTargetChecked]:
    return [e for e in h.events if isinstance(e, JobTargetChecked)]


async def settle(h: Harness) -> None:
    for _ in range(100):
        if not h.engine.check_tasks:
            return
        await asyncio.gather(*h.engine.check_tasks, return_exceptions=True)
    raise AssertionError("checks never ended")


def test_the_rule() -> None:
    job = export_job(Path("/mnt/x"))
    check = JobTargetChecked(node_id="a", job_id="exp", config_event_id=job.event_id,
                             target_dir="/mnt/x", ok=True, detail="ok", role_epoch=3)
    assert needs_target_check(job, None, "a", 3)
    assert not needs_target_check(job, check, "a", 3)
    assert needs_target_check(job, check, "b", 4)  # a new holder checks its own mounts
    assert needs_target_check(job, check, "a", 5)  # the same node in a new tenure too
    assert needs_target_check(export_job(Path("/mnt/x")), check, "a", 3)  # a new definition
    assert not needs_target_check(purge_job(), None, "a", 3)


async def test_missing_target_is_reported_then_ok_once_created(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.hold_role()
    share = tmp_path / "share"
    h.configure(export_job(share))
    await settle(h)
    [missing] = checks(h)
    assert not missing.ok and "does not exist" in missing.detail and missing.node_id == "n1"
    assert not share.exists()  # the mount point is never created
    view = h.engine.status().jobs[0].target_check
    assert view is not None and not view.ok and view.current

    share.mkdir()
    h.configure(export_job(share))  # saved again: a new definition, checked again
    await settle(h)
    assert [c.ok for c in checks(h)] == [False, True]
    assert "writable" in checks(h)[1].detail
    assert not [p for p in share.iterdir()]  # the probe file is gone
    h.engine.apply(checks(h)[0])  # a repeat of the old check changes nothing
    view = h.engine.status().jobs[0].target_check
    assert view is not None and view.ok and view.current


async def test_only_the_holder_checks_and_a_new_holder_checks_again(tmp_path: Path) -> None:
    h = Harness(tmp_path, node="b")
    h.engine.set_ready()
    h.engine.set_role("a", 1)
    h.configure(export_job(tmp_path))
    await settle(h)
    assert checks(h) == []
    peer = JobTargetChecked(node_id="a", job_id="exp",
                            config_event_id=h.engine.book.jobs["exp"].event_id,
                            target_dir=str(tmp_path), ok=False, detail="missing on a",
                            role_epoch=1)
    h.engine.apply(peer)
    view = h.engine.status().jobs[0].target_check
    assert view is not None and view.node_id == "a" and view.current and not view.ok
    h.engine.set_role("b", 2)  # takeover: b's own mounts count now
    await settle(h)
    [mine] = checks(h)
    assert mine.ok and mine.node_id == "b" and mine.role_epoch == 2
    view = h.engine.status().jobs[0].target_check
    assert view is not None and view.node_id == "b" and view.current
    h.engine.kick()
    await settle(h)
    assert len(checks(h)) == 1  # checked once per definition and tenure


async def test_unwritable_target_is_not_ok(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.hold_role()
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    h.configure(export_job(a_file))
    await settle(h)
    [check] = checks(h)
    assert not check.ok and "not a directory" in check.detail
