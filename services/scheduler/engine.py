"""Runs the maintenance jobs on the node holding the role; keeps every node's view.

Every node applies the cluster's events to a `JobBook` and keeps an APScheduler
schedule of every job, so the next fire time shows anywhere and a backup taking the
role fires the same schedule; only the holder acts. Runs are recorded as events, so
a new holder resumes a run the old one never finished. File work runs in threads:
the event loop keeps answering heartbeats and the status RPC during a long export.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger

from callrec.store import ObjectStore
from contracts.v1.events import (
    EventBase,
    JobConfigured,
    JobRemoved,
    JobRunFailed,
    JobRunFinished,
    JobRunProgressed,
    JobRunRequested,
    JobRunStarted,
    JobTargetChecked,
    RecordingCompleted,
    RecordingExported,
    RecordingPurged,
    new_id,
)
from contracts.v1.rpc import JobsStatus

from .exportio import (
    TargetUnavailable,
    check_target,
    export_recording,
    probe_target,
    remove_export,
    target_error,
)
from .exportplan import check_template, pending_exports, render_path
from .jobs import (
    JobBook,
    exported_event_id,
    needs_target_check,
    purged_event_id,
    stable_id,
)
from .retention import purge_candidates
from .schedules import build_trigger, next_fire

RETRY_S = 30.0
"""A failed run (target missing, full...) is tried again this long after, besides its schedule."""
PROGRESS_EVERY_S = 1.0
PROGRESS_EVERY_ITEMS = 50

log = structlog.get_logger(component="jobs")

Publish = Callable[[EventBase], Awaitable[Any]]


class RunStopped(Exception):
    """The node lost the maintenance role during a run: stop between two recordings."""


@dataclass
class RunHandle:
    run_id: str
    job_id: str
    task: asyncio.Task[None] | None = None
    stop_reason: str | None = None
    done: int = 0
    total: int = 0
    processed: int = 0
    skipped: int = 0
    bytes: int = 0
    last_progress: float = field(default_factory=time.monotonic)
    last_progress_done: int = 0


class JobEngine:
    def __init__(
        self,
        node_id: str,
        store: ObjectStore,
        publish: Publish,
        *,
        retry_s: float = RETRY_S,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.me = node_id
        self.store = store
        self.publish = publish
        self.retry_s = retry_s
        self.now = now
        self.book = JobBook()
        self.holder: str | None = None
        self.epoch = 0
        self.ready = False
        self.resume_due = False
        self.running: dict[str, RunHandle] = {}
        self.launched: set[str] = set()
        self.checking: set[tuple[str, str, int]] = set()  # (job, definition, epoch) in hand
        self.check_tasks: set[asyncio.Task[None]] = set()
        self.scheduler = AsyncIOScheduler()
        self.counts = {"runs": 0, "failed": 0, "purged": 0, "exported": 0, "exported_bytes": 0}

    # ---- life cycle -----------------------------------------------------------------

    def start(self) -> None:
        """Start the scheduler (needs the running event loop)."""
        self.scheduler.start()

    async def shutdown(self) -> None:
        """Stop without end events: whoever holds the role next resumes the runs."""
        with contextlib.suppress(Exception):
            self.scheduler.shutdown(wait=False)
        for task in list(self.check_tasks):
            task.cancel()
        handles = list(self.running.values())
        for handle in handles:
            if handle.task is not None:
                handle.task.cancel()
        for handle in handles:
            if handle.task is not None:
                with contextlib.suppress(BaseException):
                    await handle.task

    @property
    def holds(self) -> bool:
        return self.holder == self.me

    # ---- inputs ---------------------------------------------------------------------

    def apply(self, event: Any) -> None:
        if not self.book.apply(event):
            return
        if isinstance(event, JobConfigured | JobRemoved):
            self._schedule(event.job_id)
        if isinstance(event, JobConfigured | JobRunRequested):
            self.kick()  # a request may have arrived before the job it names

    def set_ready(self) -> None:
        """The past events are applied: acting earlier could redo finished work."""
        if not self.ready:
            self.ready = True
            log.info("jobs_ready", jobs=len(self.book.jobs),
                     recordings=len(self.book.recordings))
            self.kick()

    def set_role(self, holder: str | None, epoch: int) -> None:
        previous = self.holder
        self.holder, self.epoch = holder, epoch
        if holder == self.me and previous != self.me:
            self.resume_due = True
            self.kick()
        elif previous == self.me and holder != self.me:
            for handle in self.running.values():
                handle.stop_reason = f"maintenance role moved to {holder or 'nobody'}"

    def kick(self) -> None:
        """Start what the holder owes: unfinished runs after a takeover, run-now requests."""
        if not (self.ready and self.holds):
            return
        if self.resume_due:
            self.resume_due = False
            for job_id in sorted(self.book.jobs):
                if self._owes(job_id):
                    self.start_run(job_id, "resume")
        for run_id, request in self.book.pending_requests():
            if run_id not in self.launched and request.job_id not in self.running:
                self.start_run(request.job_id, "request", dry_run=request.dry_run, run_id=run_id)
        self._check_targets()

    # ---- export target checks -------------------------------------------------------

    def _check_targets(self) -> None:
        """Check the target of each export job whose current definition this holder has
        not checked in its current tenure (a save anywhere, a takeover, a start)."""
        for job_id in sorted(self.book.jobs):
            job = self.book.jobs[job_id]
            key = (job_id, job.event_id, self.epoch)
            if key in self.checking or not needs_target_check(
                    job, self.book.target_checks.get(job_id), self.me, self.epoch):
                continue
            self.checking.add(key)
            task = asyncio.create_task(self._check_target(job))
            self.check_tasks.add(task)
            task.add_done_callback(self.check_tasks.discard)

    async def _check_target(self, job: JobConfigured) -> None:
        assert job.export is not None
        ok, detail = await asyncio.to_thread(probe_target, Path(job.export.target_dir), self.me)
        event = JobTargetChecked(
            event_id=stable_id(f"job.target_checked:{job.event_id}:{self.me}:{self.epoch}"),
            node_id=self.me, job_id=job.job_id, config_event_id=job.event_id,
            target_dir=job.export.target_dir, ok=ok, detail=detail[:2000],
            role_epoch=self.epoch)
        log.info("export_target_checked", job_id=job.job_id, name=job.name, ok=ok,
                 detail=detail, epoch=self.epoch)
        try:
            await self.publish(event)
        except Exception as exc:
            log.error("export_target_check_not_stored", job_id=job.job_id, error=str(exc))
            self.checking.discard((job.job_id, job.event_id, self.epoch))

    # ---- schedules ------------------------------------------------------------------

    def _schedule(self, job_id: str) -> None:
        key = f"job:{job_id}"
        with contextlib.suppress(JobLookupError):
            self.scheduler.remove_job(key)
        job = self.book.jobs.get(job_id)
        if job is None or job.paused:
            return
        try:
            trigger = build_trigger(job.schedule, job.occurred_at)
        except ValueError as exc:
            log.error("job_schedule_invalid", job_id=job_id, error=str(exc))
            return
        if trigger is not None:
            self.scheduler.add_job(self._fire, trigger, args=[job_id], id=key,
                                   replace_existing=True, coalesce=True, max_instances=1,
                                   misfire_grace_time=60)

    async def _fire(self, job_id: str) -> None:
        job = self.book.jobs.get(job_id)
        if job is None or job.paused or not (self.ready and self.holds):
            return
        if not self.start_run(job_id, "schedule"):
            log.info("job_still_running", job_id=job_id)

    def _owes(self, job_id: str) -> bool:
        """An unfinished or failed last run to pick up again (a paused job waits to be asked)."""
        job = self.book.jobs.get(job_id)
        return (job is not None and not job.paused and job_id not in self.running
                and self.book.needs_resume(job_id))

    async def _retry(self, job_id: str) -> None:
        if self.ready and self.holds and self._owes(job_id):
            self.start_run(job_id, "retry")

    def _schedule_retry(self, job_id: str) -> None:
        when = datetime.now(UTC) + timedelta(seconds=self.retry_s)
        with contextlib.suppress(Exception):
            self.scheduler.add_job(self._retry, DateTrigger(run_date=when), args=[job_id],
                                   id=f"retry:{job_id}", replace_existing=True,
                                   misfire_grace_time=60)

    # ---- runs -----------------------------------------------------------------------

    def start_run(self, job_id: str, trigger: str, dry_run: bool = False,
                  run_id: str | None = None) -> bool:
        """False when the job is unknown or already running here (never twice at once)."""
        job = self.book.jobs.get(job_id)
        if job is None or job_id in self.running:
            return False
        handle = RunHandle(run_id or new_id(), job_id)
        self.launched.add(handle.run_id)
        self.running[job_id] = handle
        handle.task = asyncio.create_task(self._run(job, handle, trigger, dry_run))
        return True

    async def _run(self, job: JobConfigured, handle: RunHandle, trigger: str,
                   dry_run: bool) -> None:
        started = time.monotonic()
        self.counts["runs"] += 1
        try:
            await self.publish(JobRunStarted(
                event_id=stable_id(f"job.run_started:{handle.run_id}"), node_id=self.me,
                job_id=job.job_id, run_id=handle.run_id, dry_run=dry_run,
                role_epoch=self.epoch, trigger=trigger))
            log.info("job_run_started", job_id=job.job_id, name=job.name, kind=job.kind,
                     run_id=handle.run_id, trigger=trigger, dry_run=dry_run)
            if job.kind == "purge":
                finished = await self._purge(job, handle, dry_run)
            else:
                finished = await self._export(job, handle, dry_run)
            await self.publish(finished)
            elapsed = time.monotonic() - started
            log.info("job_run_finished", job_id=job.job_id, run_id=handle.run_id,
                     processed=finished.processed, skipped=finished.skipped,
                     bytes=finished.bytes, seconds=round(elapsed, 3),
                     per_second=round(finished.processed / elapsed, 1) if elapsed else None)
        except RunStopped as stop:
            await self._failed(job, handle, f"interrupted: {stop}", retry=False)
        except asyncio.CancelledError:
            raise  # the service stops: no end event, the next holder resumes this run
        except Exception as exc:
            await self._failed(job, handle, f"{type(exc).__name__}: {exc}"
                               if not isinstance(exc, TargetUnavailable) else str(exc),
                               retry=not dry_run)
        finally:
            if self.running.get(job.job_id) is handle:
                del self.running[job.job_id]
        self.kick()

    async def _failed(self, job: JobConfigured, handle: RunHandle, error: str,
                      retry: bool) -> None:
        self.counts["failed"] += 1
        log.error("job_run_failed", job_id=job.job_id, name=job.name, run_id=handle.run_id,
                  error=error, processed=handle.processed,
                  retry_in_s=self.retry_s if retry else None)
        try:
            await self.publish(JobRunFailed(node_id=self.me, job_id=job.job_id,
                                            run_id=handle.run_id, error=error,
                                            processed=handle.processed))
        except Exception as exc:
            log.error("job_run_failure_not_stored", job_id=job.job_id, error=str(exc))
        if retry:
            self._schedule_retry(job.job_id)

    def _check(self, handle: RunHandle) -> None:
        if handle.stop_reason is not None:
            raise RunStopped(handle.stop_reason)

    async def _progress(self, handle: RunHandle, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - handle.last_progress < PROGRESS_EVERY_S \
                and handle.done - handle.last_progress_done < PROGRESS_EVERY_ITEMS:
            return
        handle.last_progress, handle.last_progress_done = now, handle.done
        await self.publish(JobRunProgressed(node_id=self.me, job_id=handle.job_id,
                                            run_id=handle.run_id, done=handle.done,
                                            total=handle.total, bytes=handle.bytes))

    def _finished(self, handle: RunHandle, would_purge: list[str] | None = None) -> JobRunFinished:
        return JobRunFinished(node_id=self.me, job_id=handle.job_id, run_id=handle.run_id,
                              processed=handle.processed, skipped=handle.skipped,
                              bytes=handle.bytes, would_purge=would_purge or [])

    async def _purge(self, job: JobConfigured, handle: RunHandle,
                     dry_run: bool) -> JobRunFinished:
        if job.purge is None:
            raise ValueError("purge job without purge parameters")
        due = purge_candidates(job.purge, self.book.live_recordings(), self.book.held,
                               self.book.users, self.now())
        handle.total = len(due)
        if dry_run:
            return self._finished(handle, [rec.recording_id for rec in due])
        await self._progress(handle, force=True)
        for rec in due:
            self._check(handle)
            handle.done += 1
            if rec.recording_id in self.book.held or rec.recording_id in self.book.purged:
                handle.skipped += 1  # put on hold (or deleted) since the run began
                continue
            version = self.book.ledger.hold_version(rec.recording_id)
            await self.publish(RecordingPurged(
                event_id=purged_event_id(rec.recording_id, version), node_id=self.me,
                recording_id=rec.recording_id, object_key=rec.object_key,
                reason=f"retention (job {job.name})", requested_by=f"job:{job.job_id}"))
            handle.processed += 1
            handle.bytes += rec.size_bytes
            self.counts["purged"] += 1
            await self._progress(handle)
        return self._finished(handle)

    def _local(self, rec: RecordingCompleted) -> Path | None:
        """This node's complete copy of a recording, if it has one."""
        try:
            if self.store.exists(rec.object_key) and \
                    self.store.size(rec.object_key) == rec.size_bytes:
                return self.store.local_path(rec.object_key)
        except (OSError, ValueError):
            pass
        return None

    async def _export(self, job: JobConfigured, handle: RunHandle,
                      dry_run: bool) -> JobRunFinished:
        params = job.export
        if params is None:
            raise ValueError("export job without export parameters")
        problem = check_template(params.path_template, params.format)
        if problem:
            raise ValueError(problem)
        target = Path(params.target_dir)
        await asyncio.to_thread(check_target, target)
        prefix = params.target_dir.rstrip("/") + "/"
        # A call replaced by a better copy (`contracts.v1.winner`) after its export is
        # exported again: the winner, once; the loser's file is overwritten in place or,
        # when the template renders another path, deleted after the winner is written.
        exported, stale = self.book.exports_of(job.job_id)
        todo = pending_exports(self.book.live_recordings(), exported, params.target_dir)
        handle.total = len(todo)
        await self._progress(handle, force=True)
        if dry_run:
            return self._finished(handle)
        for rec in todo:
            self._check(handle)
            rid = rec.recording_id
            handle.done += 1
            if rid in self.book.purged or exported.get(rid, "").startswith(prefix):
                continue
            source = self._local(rec)
            if source is None:
                handle.skipped += 1  # not replicated here yet: a later run exports it
                continue
            relative = render_path(params.path_template, rec, params.format)
            try:
                written = await asyncio.to_thread(
                    export_recording, source, target, relative, rec, params.format,
                    params.sidecar, self.me)
                old = stale.get(rid)
                if old is not None and old != str(written.path):
                    await asyncio.to_thread(remove_export, target, Path(old), params.format)
            except Exception as exc:
                reason = await asyncio.to_thread(target_error, exc, target)
                if reason is not None:
                    raise TargetUnavailable(reason) from exc
                log.error("export_recording_failed", job_id=job.job_id, recording_id=rid,
                          error=f"{type(exc).__name__}: {exc}")
                handle.skipped += 1
                continue
            event_id = exported_event_id(job.job_id, rid, rec.event_id)
            await self.publish(RecordingExported(
                event_id=event_id, node_id=self.me,
                job_id=job.job_id, run_id=handle.run_id, recording_id=rid,
                path=str(written.path), size_bytes=written.size))
            self.book.note_export(job.job_id, rid, event_id, str(written.path))
            exported[rid] = str(written.path)
            if rid in stale:
                log.info("export_replaced", job_id=job.job_id, recording_id=rid,
                         previous=stale[rid], path=str(written.path))
            handle.processed += 1
            handle.bytes += written.size
            self.counts["exported"] += 1
            self.counts["exported_bytes"] += written.size
            await self._progress(handle)
        return self._finished(handle)

    # ---- status ---------------------------------------------------------------------

    def status(self) -> JobsStatus:
        now = datetime.now(UTC)
        views = []
        for job_id in sorted(self.book.jobs):
            job = self.book.jobs[job_id]
            view = self.book.job_view(job_id, self.holder,
                                      next_fire(job.schedule, job.occurred_at, now))
            handle = self.running.get(job_id)
            for run in view.last_runs:
                if handle is not None and run.run_id == handle.run_id and run.state == "running":
                    run.done, run.total, run.bytes = handle.done, handle.total, handle.bytes
            views.append(view)
        return JobsStatus(node_id=self.me, holder=self.holder, jobs=views)
