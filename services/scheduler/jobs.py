"""The maintenance projection: jobs, runs, holds, recordings, users, exports (pure).

Built by every node from the same CLUSTER events, so any node can show the history
and a backup that takes the role knows what the primary did: which requests are still
waiting, which run never finished, what an export already wrote. Events from
different nodes arrive in any order and may repeat, so everything is keyed by ids
and tolerant of an end arriving before its start.
"""

from __future__ import annotations

import uuid
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime

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
    LegalHoldChanged,
    RecordingCompleted,
    RecordingExported,
    RecordingPurged,
    UserRemoved,
    UserUpserted,
    type_of,
)
from contracts.v1.holds import HoldLedger
from contracts.v1.rpc import JobRunView, JobView, TargetCheckView
from contracts.v1.winner import better

from .retention import UserInfo

NAMESPACE = uuid.UUID("4d7f5a2e-2b1c-4f0e-8a61-5c3e9b7d2f10")
LAST_RUNS = 10


def stable_id(text: str) -> str:
    """Deterministic event/run id: the same fact from two nodes is one duplicate."""
    return uuid.uuid5(NAMESPACE, text).hex


def purged_event_id(recording_id: str, hold_version: str = "") -> str:
    """Two role holders purging the same recording issue one fact; `hold_version` (the
    hold fact in force, see `HoldLedger.hold_version`) makes a purge issued after a
    release a new fact, not a duplicate of one that a hold voided."""
    if not hold_version:
        return stable_id(f"recording.purged:{recording_id}")
    return stable_id(f"recording.purged:{recording_id}:{hold_version}")


def exported_event_id(job_id: str, recording_id: str, completion_id: str = "") -> str:
    """The export of one completion of a recording (`completion_id`: its event id), so
    the book can tell whether what a job wrote is still the winner of the call
    (`contracts.v1.winner`); without it, the id of exports made before that rule."""
    if not completion_id:
        return stable_id(f"recording.exported:{job_id}:{recording_id}")
    return stable_id(f"recording.exported:{job_id}:{recording_id}:{completion_id}")


def needs_target_check(
    job: JobConfigured, last: JobTargetChecked | None, holder: str, epoch: int
) -> bool:
    """Whether the role holder owes an export job's target check: none yet for this
    definition, or none by the holder in its current tenure (a new holder checks again:
    its mounts are what counts, and a check by a node that lost the role says nothing
    about the node that runs the exports now)."""
    if job.kind != "export" or job.export is None:
        return False
    return (last is None or last.config_event_id != job.event_id or last.node_id != holder
            or last.role_epoch != epoch)


def requested_run_id(request_event_id: str) -> str:
    """A run-now request's run id, so whoever starts it marks the request as handled."""
    return stable_id(f"job.run:{request_event_id}")


@dataclass
class Run:
    run_id: str
    job_id: str
    node_id: str = ""
    started_at: datetime | None = None
    order: int = 0
    trigger: str = "schedule"
    dry_run: bool = False
    role_epoch: int = 0
    ended: bool = False
    failed: bool = False
    ended_at: datetime | None = None
    done: int = 0
    total: int = 0
    bytes: int = 0
    processed: int = 0
    skipped: int = 0
    error: str | None = None
    would_purge: list[str] = field(default_factory=list)


APPLIED: tuple[type[EventBase], ...] = (
    RecordingCompleted, RecordingPurged, LegalHoldChanged, RecordingExported,
    UserUpserted, UserRemoved, JobConfigured, JobRemoved, JobRunRequested,
    JobRunStarted, JobRunProgressed, JobRunFinished, JobRunFailed, JobTargetChecked,
)
"""The events `JobBook.apply` uses: the scheduler follows these alone (a burst of
endings also brings waveforms, copies and progress, which it would parse for nothing)."""
APPLIED_TYPES: tuple[str, ...] = tuple(type_of(event) for event in APPLIED)


class JobBook:
    """Apply events in stream order; query what a holder has to do and what to show."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.jobs: dict[str, JobConfigured] = {}
        self.removed: set[str] = set()
        self.runs: dict[str, Run] = {}
        self.requests: dict[str, JobRunRequested] = {}  # by the run id they lead to
        self.recordings: dict[str, RecordingCompleted] = {}  # purged ones too (see holds)
        self.ledger = HoldLedger()
        self.users: dict[str, UserInfo] = {}
        self.exported: dict[str, dict[str, str]] = {}  # job -> recording -> path
        self.export_ids: dict[str, dict[str, str]] = {}  # job -> recording -> export event id
        self.completions: dict[str, set[str]] = {}  # recording -> its completions' event ids
        self.target_checks: dict[str, JobTargetChecked] = {}  # job -> latest check
        self._order = 0

    def apply(self, event: object) -> bool:
        """Returns False for an event already applied (same id) or not one it uses
        (APPLIED, which is also all the scheduler is sent)."""
        if not isinstance(event, APPLIED):
            return False
        event_id = event.event_id
        if isinstance(event, RecordingPurged | LegalHoldChanged):
            # Kept as (id, time) versions by the ledger, so a reused id cannot make two
            # nodes disagree on which version they saw first.
            self.seen.add(event_id)
            return self.ledger.add(event)
        if event_id in self.seen:
            return False
        self.seen.add(event_id)
        match event:
            case RecordingCompleted():
                # One recording per call: a takeover copy and the origin's, the best kept.
                self.completions.setdefault(event.recording_id, set()).add(event.event_id)
                if better(event, self.recordings.get(event.recording_id)):
                    self.recordings[event.recording_id] = event
            case UserUpserted():
                self.users[event.username] = UserInfo(frozenset(event.extensions),
                                                      frozenset(event.groups))
            case UserRemoved():
                self.users.pop(event.username, None)
            case JobConfigured():
                self.jobs[event.job_id] = event
                self.removed.discard(event.job_id)
            case JobRemoved():
                self.jobs.pop(event.job_id, None)
                self.removed.add(event.job_id)
            case JobRunRequested():
                self.requests[requested_run_id(event.event_id)] = event
            case JobRunStarted():
                self._start(event)
            case JobRunProgressed():
                run = self._run(event.job_id, event.run_id)
                if not run.ended:
                    run.done, run.total, run.bytes = event.done, event.total, event.bytes
            case JobRunFinished():
                run = self._end(event.job_id, event.run_id, event.occurred_at)
                run.processed, run.skipped, run.bytes = event.processed, event.skipped, event.bytes
                run.done = max(run.done, event.processed + event.skipped)
                run.would_purge = list(event.would_purge)
            case JobRunFailed():
                run = self._end(event.job_id, event.run_id, event.occurred_at)
                run.failed, run.error, run.processed = True, event.error, event.processed
            case JobTargetChecked():
                last = self.target_checks.get(event.job_id)
                if last is None or (last.occurred_at, last.event_id) < (
                        event.occurred_at, event.event_id):
                    self.target_checks[event.job_id] = event
            case RecordingExported():
                self.note_export(event.job_id, event.recording_id, event.event_id, event.path)
            case _:
                pass
        return True

    def note_export(self, job_id: str, recording_id: str, event_id: str, path: str) -> None:
        self.exported.setdefault(job_id, {})[recording_id] = path
        self.export_ids.setdefault(job_id, {})[recording_id] = event_id

    def exports_of(self, job_id: str) -> tuple[dict[str, str], dict[str, str]]:
        """(exports of the current winner of each call, exports of a copy that lost
        since): recording -> path. An export whose id names no completion (made before
        the winner rule) counts as current unless a takeover copy won the call."""
        current: dict[str, str] = {}
        stale: dict[str, str] = {}
        ids = self.export_ids.get(job_id, {})
        for rid, path in self.exported.get(job_id, {}).items():
            rec = self.recordings.get(rid)
            versions = {exported_event_id(job_id, rid, c): c
                        for c in self.completions.get(rid, ())}
            export_id = ids.get(rid, "")
            if rec is None:
                ok = True
            elif export_id in versions:
                ok = versions[export_id] == rec.event_id
            else:
                ok = not rec.interrupted
            (current if ok else stale)[rid] = path
        return current, stale

    def _run(self, job_id: str, run_id: str) -> Run:
        run = self.runs.get(run_id)
        if run is None:
            run = self.runs[run_id] = Run(run_id, job_id)
        return run

    def _start(self, event: JobRunStarted) -> None:
        run = self._run(event.job_id, event.run_id)
        self._order += 1
        run.node_id, run.started_at, run.order = event.node_id, event.occurred_at, self._order
        run.trigger, run.dry_run, run.role_epoch = event.trigger, event.dry_run, event.role_epoch

    def _end(self, job_id: str, run_id: str, at: datetime) -> Run:
        run = self._run(job_id, run_id)
        run.ended, run.ended_at = True, at
        return run

    # ---- what the holder has to do ------------------------------------------------

    def pending_requests(self) -> list[tuple[str, JobRunRequested]]:
        """Run-now requests of existing jobs that no node has started, oldest first."""
        return [
            (run_id, request) for run_id, request in self.requests.items()
            if request.job_id in self.jobs
            and (run_id not in self.runs or self.runs[run_id].started_at is None)
        ]

    def runs_of(self, job_id: str) -> list[Run]:
        """Started runs of a job, newest first."""
        runs = [r for r in self.runs.values() if r.job_id == job_id and r.started_at]
        return sorted(runs, key=lambda r: r.order, reverse=True)

    def needs_resume(self, job_id: str) -> bool:
        """The job's last real run (not a dry run) never finished or failed: a new holder
        runs it again, and the export's record of what it wrote makes it continue."""
        for run in self.runs_of(job_id):
            if not run.dry_run:
                return not run.ended or run.failed
        return False

    @property
    def held(self) -> AbstractSet[str]:
        """Recordings under legal hold now (last writer wins, `contracts.v1.holds`)."""
        return self.ledger.held_ids

    @property
    def purged(self) -> AbstractSet[str]:
        """Recordings whose purge is in effect (hold wins, `contracts.v1.holds`)."""
        return self.ledger.purged_ids

    def live_recordings(self) -> list[RecordingCompleted]:
        purged = self.ledger.purged_ids
        return [rec for rid, rec in self.recordings.items() if rid not in purged]

    # ---- what to show ---------------------------------------------------------------

    def run_view(self, run: Run, newest: bool) -> JobRunView:
        if run.ended:
            state = "failed" if run.failed else "finished"
        else:
            state = "running" if newest else "interrupted"
        assert run.started_at is not None
        return JobRunView(
            run_id=run.run_id, job_id=run.job_id, node_id=run.node_id,
            started_at=run.started_at, trigger=run.trigger, dry_run=run.dry_run, state=state,
            ended_at=run.ended_at, done=run.done, total=run.total, bytes=run.bytes,
            processed=run.processed, skipped=run.skipped, error=run.error,
            would_purge=run.would_purge,
        )

    def job_view(self, job_id: str, holder: str | None, next_run: datetime | None) -> JobView:
        job = self.jobs[job_id]
        params = job.purge if job.kind == "purge" else job.export
        runs = self.runs_of(job_id)[:LAST_RUNS]
        return JobView(
            job_id=job_id, name=job.name, kind=job.kind,
            schedule=job.schedule.model_dump(mode="json"), paused=job.paused,
            params=params.model_dump(mode="json") if params is not None else {},
            next_run=None if job.paused else next_run, runs_on=holder,
            last_runs=[self.run_view(run, i == 0) for i, run in enumerate(runs)],
            exported=len(self.exported.get(job_id, {})) if job.kind == "export" else None,
            config_event_id=job.event_id,
            target_check=self.target_check_view(job_id, holder),
        )

    def target_check_view(self, job_id: str, holder: str | None) -> TargetCheckView | None:
        job, check = self.jobs.get(job_id), self.target_checks.get(job_id)
        if job is None or check is None or job.kind != "export":
            return None
        return TargetCheckView(
            ok=check.ok, detail=check.detail, node_id=check.node_id,
            checked_at=check.occurred_at, target_dir=check.target_dir,
            config_event_id=check.config_event_id,
            current=check.config_event_id == job.event_id and check.node_id == holder,
        )
