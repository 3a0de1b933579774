"""Capture service adapter: RPCs from signaling, UDP endpoints, crash recovery, events.

A recording lives in `<data>/capture/active/<id>/` (manifest + segments) until its
Ogg/Opus is in the store and `recording.completed` is published; only then are the
raw packets removed. A restart takes back the sockets of recordings still in progress from the
socket keeper (callrec/sockets.py: the supervisor holds a copy of each, so what
arrived while capture was down waits in the kernel) or re-opens their ports;
any that signaling no longer knows (the node crashed, the call is gone) are
finalized from what is on disk.

While a call is recorded, a worker process encodes it into its final Ogg/Opus file
(`live.opus`, see live.py) a flush at a time and capture publishes the progress on
core NATS; finalize then only encodes the last half second and closes that file.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import shutil
import socket
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TypeVar, get_args

import nats.errors
import structlog

from callrec import bus, diskspace, native, writeback
from callrec.fdlimit import raise_open_files
from callrec.service import ServiceContext
from callrec.sockets import KeeperClient, keeper_path
from callrec.store import ObjectStore, open_store
from contracts import subjects
from contracts.subjects import check_plain_id
from contracts.v1.events import RecordingCompleted, RecordingFailed, RecordingWaveformComputed
from contracts.v1.rpc import (
    MAX_PROGRESS_BATCH,
    QUIET_AFTER_S,
    ActiveRecordings,
    AllocateReply,
    AllocateRequest,
    CaptureHealth,
    Empty,
    FinalizeRequest,
    LiveProgress,
    LiveProgressBatch,
    QuietStream,
    ReleaseRequest,
    ReserveReply,
    ReserveRequest,
    RtpSource,
    StreamSpec,
    UpdateRequest,
)

from . import finished
from .capacity import LagGate, live_lag
from .finalize import (
    CaptureSideSlots,
    FinalizeResult,
    FinishBatcher,
    duration_of,
    stream_specs,
    sync_segments,
)
from .latching import (
    DROP_REASONS,
    DropReason,
    Endpoint,
    Expected,
    expected_from_sdp,
    on_sdp,
)
from .live import (
    LIVE_FILE,
    Progress,
    SegmentTail,
    StepJob,
    worker_drop,
    worker_steps,
)
from .manifest import (
    JOURNAL,
    MANIFEST,
    ManifestJournal,
    RecordingManifest,
    StreamManifest,
    write_manifest,
)
from .ports import PortPool, PortsExhausted, ReservedPorts, open_rtp_socket
from .receiver import BatchReader, StreamReceiver
from .segments import FileWork, SegmentWriter, next_segment_index, segment_path
from .timeline import SilentReason

# What a SIGKILL can lose: packets read but not yet written (the socket keeper
# keeps the rest), so at most this much of each stream. Each flush costs a write()
# per stream (800 at 400 calls): at 0.1 s that was about a sixth of receiving's CPU.
FLUSH_INTERVAL = 0.25
# How often the segments of the calls in progress are handed to the kernel's writeback
# (callrec.writeback): the fsync at a call's end then finds at most this much unwritten.
# At 5 s, 400 calls ending at once still wrote up to 5 s of each call's packets (up to
# 40 MB) in their fsyncs. A pass costs about 3.4 us a file of its own (open, call,
# close); the kernel's writing it starts, 10-25 us a file more, is work the fsync at
# the end would do (bench/README.md, "BYE->playable from the logs, and three cuts in
# the burst"). At 1 s that was about a tenth of receiving's CPU at 100 calls (a page
# still filling is written again at every pass); 2 s cost the burst nothing measurable
# ("Capture's receive cost against rtpengine's").
WRITEBACK_INTERVAL = 2.0
# How long a reserved port stays bound unused for signaling (which stops answering
# with it a third of that earlier), then closed and back in the pool.
RESERVE_LEASE_S = 30.0
# Live encoding steps at most this often (each step costs a segment read and a
# write per call), whatever the flush interval.
LIVE_STEP_INTERVAL = 0.5
LIVE_CHUNK_SECONDS = 0.05
"""Live steps go to an encoder worker in round trips of about this much of its time.
A finish queued for that worker runs between two of them, so it waits tens of ms, not
for a step of every call the worker holds: at 400 calls on 2 cores that took a second
and more, and the finishes waited behind it (bench/churn.py: BYE->playable p99 2.7 s,
0.5 s in chunks). Sized by time, not count: on an idle worker a round trip holds
hundreds of steps, so the extra round trips cost nothing where nothing waits."""
LIVE_CHUNK_MIN = 16
LIVE_CHUNKS_MAX = 8
"""At most this many round trips a step per worker: each costs capture's event loop a
few hundred microseconds, which a burst of set-ups (1,600 calls in progress at 200
calls/s) would otherwise pay a hundred times a step. At 400 calls (200 a worker) the
time bound is the smaller one."""
LIVE_CHUNK_CEILING_SECONDS = 0.25
"""The count bounds above never make a round trip longer than about this. When the
encoding is seconds behind, each step catches up seconds of its call (tens of ms of the
worker), and 16-25 of them made a round trip of 1-2 s that every finish queued behind
(bench/churn.py, 400 calls of 60 s: `encode` p50 1.4 s, p99 4.7 s). Steps that dear
come at most 4 round trips a second per worker, so the loop's cost stays small."""
FIRST_STEP_SECONDS = 0.002
"""What a live step is taken to cost before one is measured (one of a busy worker)."""
JETSTREAM_POLL_INTERVAL = 2.0
# A finalize failing for a reason that is not transient (a bug, a corrupt manifest) is
# tried this often before the recording is given up as failed; transient ones (a full
# disk, the bus) are retried forever.
PERMANENT_ATTEMPTS = 3
# Recordings finalized at once per encoder worker (see finalize_concurrency).
FINALIZE_PER_WORKER = 16
# Of those, how many may do their capture-side part at once (CaptureSideSlots): it is
# fsyncs and renames waiting on the journal's commits, which concurrent ones share,
# so 8 (not 4) cut 400 calls of 120 s ending at once to BYE->playable p99 1.4-1.7 s
# from 1.8-2.7 (bench/README.md, "Eight capture-side slots")...
FINALIZE_CAPTURE_SIDE = 8
# ...and only one while calls are being set up in a burst (this many allocates within
# SETUP_QUIET_S): see finalize_may_widen.
SETUP_QUIET_S = 0.25
SETUP_BURST_ALLOCATES = 8
# ...and then no more often than this (a finalize's capture-side work has two slots).
SETUP_FINALIZE_GAP_S = 0.05
WORKER_NICE = 5
_T = TypeVar("_T")
RECONCILE_INTERVAL = 3.0
RECONCILE_GRACE = timedelta(seconds=5)
EVENT_NAMESPACE = uuid.UUID("6f1c3c5e-9a55-4c1e-9a53-7f3c1e0c2a10")

log = structlog.get_logger()


@dataclass
class LiveStream:
    manifest: StreamManifest
    writer: SegmentWriter
    receiver: StreamReceiver
    kept: bool = False  # resumed from the socket keeper after a restart


@dataclass
class LiveRecording:
    manifest: RecordingManifest
    directory: Path
    streams: dict[str, LiveStream] = field(default_factory=dict)
    finalizing: bool = False
    # Segment writers whose last data could not be written when they closed (a full
    # disk): the finalize worker writes it out before it reads the segments.
    unflushed: list[SegmentWriter] = field(default_factory=list)
    write_failing: bool = False
    # Changed since the manifest was last saved: the next flush saves it. Set by
    # allocate/update/release (the change is in the journal already) and by a stream
    # that latched (saved with the first packets that source sent).
    manifest_dirty: bool = False
    # Its directory was created by this process: no stream has old segments in it.
    # Both set by the file thread (FileWork), which makes a new recording's directory.
    fresh: bool = False
    directory_made: bool = True
    # What live steps need: `revision` counts changes a step reads (segments grown, the
    # manifest changed); `drained_at` is the revision the worker last said it had
    # encoded all of; `segments_empty` is a call set up here that no packet reached
    # yet. A call on hold, or not sent to yet, then costs no step (and no encoder).
    revision: int = 0
    drained_at: int = -1
    segments_empty: bool = False

    def changed(self, *, segments: bool = False) -> None:
        self.revision += 1
        if segments:
            self.segments_empty = False

    @property
    def live_step_wanted(self) -> bool:
        """A live step could append audio (else it would only cost CPU)."""
        return not self.segments_empty and self.revision != self.drained_at


def completed_event_id(recording_id: str) -> str:
    """Deterministic, so a retried finalize publishes a duplicate JetStream drops."""
    return uuid.uuid5(EVENT_NAMESPACE, f"recording.completed:{recording_id}").hex


def waveform_event_id(recording_id: str) -> str:
    """Deterministic like completed_event_id: a retried finalize states it once."""
    return uuid.uuid5(EVENT_NAMESPACE, f"recording.waveform_computed:{recording_id}").hex


class Capture:
    def __init__(self, ctx: ServiceContext, store: ObjectStore,
                 workers: list[Executor], new_worker: Callable[[], Executor]) -> None:
        """``workers`` run the live encoding and finalize, each with one process; a
        recording always goes to the same one (its encoder lives there).
        ``new_worker`` replaces a worker whose process died."""
        self.ctx = ctx
        self.config = ctx.config
        self.store = store
        self.workers = workers
        self._new_worker = new_worker
        self.root = ctx.config.data_dir / "capture"
        self.active_dir = self.root / "active"
        self.failed_dir = self.root / "failed"
        self.work_dir = self.root / "work"
        # Directories of recordings already stored, removed when no finalize waits
        # (finished.py); what a crash left there is removed at the start.
        self.finished_dir = self.root / "finished"
        self.removals_due = asyncio.Event()
        self.removals_due.set()
        for directory in (self.active_dir, self.failed_dir, self.work_dir,
                          self.finished_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.pool = PortPool(ctx.config.rtp_port_min, ctx.config.rtp_port_max)
        # Ports bound for signaling's reserve, not yet a stream's; this process's name
        # on them (a restarted capture holds none of them).
        self.reserved = ReservedPorts()
        self.capture_id = uuid.uuid4().hex
        self.journal = ManifestJournal(self.root / JOURNAL)
        # Directory and segment-file creation of call set-up, and the flush's manifest
        # saves, off the event loop.
        self.files = FileWork()
        # Manifest saves the file thread has not done yet: the journal keeps their
        # changes until then.
        self.manifest_saves_pending = 0
        # Every finalize's file work (segment syncs, storing the file, the directory
        # removal) runs in these threads, only while its finalize holds one of the
        # CaptureSideSlots: one thread's share of capture's process during set-up
        # (one slot), a thread a slot otherwise, so the fsyncs of a burst of endings
        # wait on the disk side by side (a journal commits them together) instead of
        # one after another: 400 calls ending at once spent 6 s in one thread.
        self.finalize_files = ThreadPoolExecutor(FINALIZE_CAPTURE_SIDE,
                                                 thread_name_prefix="capture-finalize")
        # Its own thread: starting writeback may wait on the disk's queue, which must
        # hold up neither set-up's file work nor a finalize.
        self.writeback = ThreadPoolExecutor(1, thread_name_prefix="capture-writeback")
        self.live: dict[str, LiveRecording] = {}
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        # Recordings a finalize task is working on: one task at a time per recording.
        self.finalizing_now: set[str] = set()
        # Wall seconds a live step took in its worker's last round trip, by worker index.
        self.step_seconds: dict[int, float] = {}
        # The flush the last finished round of live steps encoded up to (wall clock).
        self.live_encoded_to: float | None = None
        # Their finishes, one round trip per worker for those that wait together.
        self.finishes = FinishBatcher(self._in_worker)
        self.finalize_slots = CaptureSideSlots(
            FINALIZE_CAPTURE_SIDE,
            lambda: finalize_may_widen(time.monotonic(), self.recent_allocates),
            SETUP_QUIET_S, SETUP_FINALIZE_GAP_S)
        # Monotonic times of the last SETUP_BURST_ALLOCATES allocates.
        self.recent_allocates: deque[float] = deque(maxlen=SETUP_BURST_ALLOCATES)
        self.closing = False
        # Disk pressure (callrec.diskspace): the reserve, JetStream's state, retries.
        self.reserve_gate = diskspace.ReserveGate(ctx.config.reserve)
        self.lag_gate = LagGate(ctx.config.max_live_lag_s)
        self.jetstream: tuple[bool, str | None] = (True, None)
        self.attempts: dict[str, int] = {}
        self.giving_up: set[str] = set()
        self.keeper: KeeperClient | None = None
        # Every stream's socket is read through this one epoll set (see receiver.py).
        self.reader = BatchReader()
        self._flushed = asyncio.Event()
        self._flushed_at = 0.0
        metrics = ctx.metrics
        self.m_packets = metrics.gauge(
            "capture_packets_received", "RTP packets stored by live streams",
            lambda: float(sum(s.receiver.packets for r in self.live.values()
                              for s in r.streams.values())),
        )
        self.m_invalid = metrics.counter("capture_packets_invalid_total",
                                         "datagrams dropped as not RTP")
        self.m_dropped = metrics.counter("capture_packets_dropped_total",
                                         "packets dropped because the disk fell behind")
        self.m_rejected = metrics.counter(
            "capture_packets_rejected_total",
            "RTP packets dropped, never recorded, because they came from another source "
            "than the stream's, or reached a reserved port before the answer that gave "
            "it away (reason: wrong_address, wrong_port, before_answer)")
        for reason in DROP_REASONS:
            self.m_rejected.inc(0, reason=reason)
        self.m_silent = metrics.counter(
            "capture_channels_silent_total",
            "recorded streams that produced no audio (reason: no_packets, not_rtp, "
            "dtmf_only, undecodable)")
        for reason in get_args(SilentReason):
            self.m_silent.inc(0, reason=reason)
        self.m_undecodable = metrics.counter(
            "capture_packets_undecodable_total",
            "RTP packets stored but not decodable (payload type no SDP mapped, or a "
            "codec error)")
        self.m_completed = metrics.counter("capture_recordings_completed_total",
                                           "recordings stored")
        self.m_failed = metrics.counter("capture_recordings_failed_total",
                                        "recordings that could not be finalized")
        self.m_recovered = metrics.counter("capture_recordings_recovered_total",
                                           "recordings found on disk after a restart")
        self.m_finalize_seconds = metrics.counter("capture_finalize_seconds_total",
                                                  "wall time spent finalizing")
        self.m_live_seconds = metrics.counter(
            "capture_live_encode_seconds_total",
            "wall time the live-encoding thread spent encoding calls in progress")
        self.m_live_steps = metrics.counter(
            "capture_live_steps_total",
            "live steps sent to the encoder workers (none for a call with nothing new)")
        self.m_live_bytes = metrics.counter(
            "capture_live_bytes_total", "Ogg/Opus bytes appended to live recordings")
        self.m_live_errors = metrics.counter(
            "capture_live_errors_total",
            "live-encoding steps that failed (retried at the next flush; finalize "
            "starts again from the segments)")
        metrics.gauge("capture_file_work_failures",
                      "file-system jobs of call set-up that failed (a segment file or a "
                      "recording directory not created, a released stream's files)",
                      lambda: float(self.files.failures))
        metrics.gauge("capture_active_recordings", "recordings in progress",
                      lambda: float(len(self.live)))
        metrics.gauge("capture_finalize_backlog", "recordings waiting to be finalized",
                      lambda: float(self.queue.qsize()))
        metrics.gauge("capture_free_ports", "RTP ports free", lambda: float(self.pool.free))
        metrics.gauge("capture_live_lag_seconds",
                      "seconds of each call in progress not yet in its live recording (nor "
                      "at the peer): about 1 while the encoders keep pace; more is what a "
                      "lost host would cost each call, and says the node is over capacity",
                      self._live_lag)
        self.m_writebacks = metrics.counter(
            "capture_segment_writebacks_total",
            "segment files of calls in progress whose writeback was started")
        self.m_retries = metrics.counter(
            "capture_finalize_retries_total",
            "finalize attempts that failed and will be retried (reason: disk_full, "
            "transient, error)")
        metrics.gauge("capture_finalize_retrying", "recordings waiting for a finalize retry",
                      lambda: float(len(self.attempts)))
        metrics.gauge("capture_over_capacity",
                      "1 while the live encoding is over --max-live-lag behind (new calls "
                      "get 503)",
                      lambda: 1.0 if self.lag_gate.state == "behind" else 0.0)
        metrics.gauge("capture_disk_reserve_low",
                      "1 while free space is below the reserve (new calls get 503)",
                      lambda: 1.0 if self.reserve_gate.state == "low" else 0.0)

    # ---- life cycle -------------------------------------------------------------

    async def run(self) -> None:
        self.keeper = KeeperClient.connect(keeper_path(self.config.data_dir))
        await self.recover()
        nc, node = self.ctx.nc, self.ctx.node_id
        await bus.serve(nc, subjects.rpc(node, subjects.CAPTURE, subjects.CAPTURE_ALLOCATE),
                        AllocateRequest, self.allocate)
        await bus.serve(nc, subjects.rpc(node, subjects.CAPTURE, subjects.CAPTURE_RESERVE),
                        ReserveRequest, self.reserve_ports)
        await bus.serve(nc, subjects.rpc(node, subjects.CAPTURE, subjects.CAPTURE_UPDATE),
                        UpdateRequest, self.update)
        await bus.serve(nc, subjects.rpc(node, subjects.CAPTURE, subjects.CAPTURE_RELEASE),
                        ReleaseRequest, self.release)
        await bus.serve(nc, subjects.rpc(node, subjects.CAPTURE, subjects.CAPTURE_FINALIZE),
                        FinalizeRequest, self.finalize)
        await bus.serve(nc, subjects.rpc(node, subjects.CAPTURE, subjects.CAPTURE_HEALTH),
                        Empty, self.health)
        await self._poll_jetstream_once()
        tasks = [
            asyncio.create_task(self._jetstream_loop()),
            asyncio.create_task(self._flush_loop()),
            asyncio.create_task(self._writeback_loop()),
            asyncio.create_task(self._reconcile_loop()),
            asyncio.create_task(self._finalize_loop()),
            asyncio.create_task(self._removal_loop()),
            asyncio.create_task(self._live_loop()),
            asyncio.create_task(self._reserve_loop()),
        ]
        await self.ctx.stopping.wait()
        self.closing = True
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Every segment file submitted is created (or failed) before the writers close.
        if not await asyncio.to_thread(self.files.wait, 10.0):
            log.error("file_work_stuck_at_shutdown")
        for recording in self.live.values():
            for stream in recording.streams.values():
                stream.receiver.close()
                with contextlib.suppress(OSError):  # a full disk: a restart resumes
                    stream.writer.close()
            if recording.manifest_dirty:
                self._save_manifest(recording)
        self.reader.close()
        for _, sock in self.reserved.release_all():
            sock.close()
        if not any(r.manifest_dirty for r in self.live.values()):
            self.journal.clear()
        self.journal.close()
        # The keeper keeps its copies: a capture restarted alone takes them back.
        if self.keeper is not None:
            self.keeper.close()
        self.files.close()
        self.finalize_files.shutdown(wait=False)
        self.writeback.shutdown(wait=False)
        log.info("capture_closed", open_recordings=len(self.live))

    async def recover(self) -> None:
        """Re-open recordings left by a previous process; queue those that had ended."""
        held = self.keeper.take() if self.keeper is not None else {}
        try:
            self._recover(held)
        finally:
            for port, sock in held.items():  # a stream that ended: nobody reads it now
                sock.close()
                if self.keeper is not None:
                    self.keeper.drop(port)

    def _replay_journal(self) -> None:
        """Write out the manifest changes a crash left in the journal only (see
        manifest.py); a state older than the manifest.json on disk is skipped."""
        states, unreadable = ManifestJournal.read(self.journal.path)
        if unreadable:
            log.warning("manifest_journal_lines_unreadable", lines=unreadable)
        for recording_id, state in states.items():
            try:
                directory = self.active_dir / check_plain_id(recording_id)
            except ValueError:
                log.error("manifest_journal_bad_id", recording_id=recording_id[:140])
                continue
            if state is None:  # released before anything was recorded
                shutil.rmtree(directory, ignore_errors=True)
                continue
            if not directory.is_dir():
                if state.ended_at is not None:  # finished since
                    continue
                # Still live at the crash (a release journals None, an end ended_at):
                # the file thread had not made its directory yet when capture died.
                directory.mkdir(exist_ok=True)
            try:
                on_disk = RecordingManifest.load(directory).revision
            except (OSError, ValueError):
                on_disk = -1
            if state.revision > on_disk:
                state.save(directory)
        if states:
            log.info("manifest_journal_replayed", recordings=len(states))
        self.journal.clear()

    def _recover(self, held: dict[int, socket.socket]) -> None:
        self._replay_journal()
        for directory in sorted(self.active_dir.iterdir()):
            if not (directory / MANIFEST).exists():
                continue
            try:
                manifest = RecordingManifest.load(directory)
            except ValueError as exc:
                log.error("manifest_unreadable", path=str(directory), error=str(exc))
                self._move_to_failed(directory)
                continue
            manifest.recovered = True
            manifest.save(directory)
            recording = LiveRecording(manifest, directory)
            self.live[manifest.recording_id] = recording
            self.m_recovered.inc()
            if manifest.ended_at is not None:
                recording.finalizing = True
                self.queue.put_nowait(manifest.recording_id)
                continue
            for stream in manifest.streams.values():
                try:
                    self._open_stream(recording, stream, stream.port,
                                      sock=held.pop(stream.port, None))
                except OSError as exc:
                    log.warning("recover_port_unavailable", recording_id=manifest.recording_id,
                                port=stream.port, error=str(exc))
            log.info("recording_recovered", recording_id=manifest.recording_id,
                     streams=len(recording.streams),
                     sockets_kept=sum(1 for s in recording.streams.values() if s.kept),
                     backlog_packets=sum(s.receiver.packets for s in recording.streams.values()))

    # ---- RPC handlers -------------------------------------------------------------

    async def allocate(self, request: AllocateRequest) -> AllocateReply:
        if self.closing:
            raise RuntimeError("capture is shutting down")
        self.recent_allocates.append(time.monotonic())
        recording = self.live.get(request.recording_id)
        if recording is None:
            directory = self.active_dir / check_plain_id(request.recording_id)
            manifest = RecordingManifest(
                recording_id=request.recording_id,
                started_at=request.started_at,
                metadata=request.metadata,
            )
            recording = LiveRecording(manifest, directory, directory_made=False,
                                      segments_empty=True)
            self.files.submit(partial(_make_directory, recording))
            self.live[request.recording_id] = recording
        elif recording.finalizing:
            raise RuntimeError(f"recording {request.recording_id} has already ended")
        else:
            recording.manifest.metadata = request.metadata
        ports: dict[str, int] = {}
        for spec in request.streams:
            existing = recording.streams.get(check_plain_id(spec.stream_id))
            if existing is not None:
                ports[spec.stream_id] = existing.manifest.port
                if spec.source is not None:
                    self._apply_source(recording, existing.manifest.stream_id, spec.source)
                continue
            stream = StreamManifest(
                stream_id=check_plain_id(spec.stream_id), channel=spec.channel,
                label=spec.label, port=0,
            )
            if spec.source is not None:
                stream.set_expectation(_expected(spec.source), None)
            if spec.port is not None:
                self._open_reserved(recording, stream, spec, request)
                ports[spec.stream_id] = spec.port
                continue
            ports[spec.stream_id] = self._bind_new(recording, stream,
                                                   sdp_pending=spec.source is None)
        self._journal(recording)  # before the reply: a PBX may send RTP at once
        log.info("streams_allocated", recording_id=request.recording_id, ports=ports)
        return AllocateReply(ports=ports)

    async def reserve_ports(self, request: ReserveRequest) -> ReserveReply:
        """Bind ports for signaling to answer new legs with before their allocate.

        The reserve is kept to a quarter of the free ports, so it never starves the
        allocates that draw their own; ports are drawn as an allocate draws them
        (unpredictably), and each is held unread until its allocate or its lease's end."""
        if self.closing:
            raise RuntimeError("capture is shutting down")
        room = (self.pool.free + len(self.reserved)) // 4 - len(self.reserved)
        until = time.monotonic() + RESERVE_LEASE_S
        ports: list[int] = []
        for _ in range(max(0, min(request.count, room))):
            for port in self.pool.candidates():
                try:
                    sock = open_rtp_socket(self.config.bind, port)
                except OSError:
                    continue
                self.pool.take(port)
                self.reserved.hold(port, sock, until)
                ports.append(port)
                break
            else:
                break
        return ReserveReply(capture_id=self.capture_id, ports=ports,
                            lease_seconds=RESERVE_LEASE_S)

    def _open_reserved(self, recording: LiveRecording, stream: StreamManifest,
                       spec: StreamSpec, request: AllocateRequest) -> None:
        """Open a stream on the reserved port signaling has already answered with.

        Its socket comes from the reserve with what reached it since the answer; if
        the reserve no longer holds it (this process restarted, the lease ran out) the
        port is bound again, if it is still free. A port held by anything else fails
        the allocate: signaling then ends the leg.

        A port signaling had from this process's predecessor may be one this process
        has just reserved again: it is given to the leg all the same (it is held
        unread, and signaling drops it from its reserve on this allocate's reply)."""
        port = spec.port
        assert port is not None
        sock = self.reserved.take(port)
        if sock is None and not self.pool.available(port):
            raise PortsExhausted(f"reserved port {port} is no longer held")
        try:
            self._open_stream(recording, stream, port, sdp_pending=spec.source is None,
                              sock=sock, reserved=True, answered_at=request.answered_at,
                              deferred=True)
        except OSError:
            self.pool.give_back(port)
            raise

    async def _reserve_loop(self) -> None:
        """Close the reserved ports whose lease ran out unused (signaling stops using
        them well before) and give them back to the pool."""
        while True:
            await asyncio.sleep(1.0)
            self._expire_reserved(time.monotonic())

    def _expire_reserved(self, now: float) -> None:
        for port, sock in self.reserved.expire(now):
            sock.close()
            self.pool.give_back(port)

    async def update(self, request: UpdateRequest) -> Empty:
        recording = self._get(request.recording_id)
        if request.metadata is not None:
            recording.manifest.metadata = request.metadata
        if request.payload_codecs is not None:
            targets = (
                [recording.manifest.streams[check_plain_id(request.stream_id)]]
                if request.stream_id is not None
                else list(recording.manifest.streams.values())
            )
            for stream in targets:
                stream.payload_codecs.update(request.payload_codecs)
        if request.source is not None:
            if request.stream_id is None:
                raise ValueError("an RTP source needs a stream_id")
            self._apply_source(recording, check_plain_id(request.stream_id), request.source)
        try:
            self._journal(recording)
        except OSError as exc:  # the next flush tries the manifest itself
            log.error("manifest_write_failed", recording_id=recording.manifest.recording_id,
                      error=str(exc))
        return Empty()

    def _journal(self, recording: LiveRecording) -> None:
        """Make a manifest change survive a crash of this process now (one append to
        the journal) and write the recording's manifest.json at the next flush: that
        batches the set-up's changes (allocate per leg, update per ACK, the end) of a
        call into one file write, a quarter of a second later, instead of one per
        change (the rewrite and rename cost about 0.3 ms each here).

        What a crash before that flush loses: nothing more than before. Capture
        killed alone (the socket keeper keeps the ports) or with the whole node: the
        journal's line is in the page cache, so the restart replays it and knows the
        recording, its ports and sources, as the renamed file told it before; without
        it, a recording allocated just before the crash would be unknown after it and
        its kept sockets closed, so the rest of the call lost. Not deferring the line
        to the flush is why. The machine itself crashing: neither the renamed file
        nor the journal was fsynced (nor the segments, until finalize), as before."""
        recording.manifest_dirty = True
        recording.changed()
        self.journal.record(recording.manifest)

    def _apply_source(self, recording: LiveRecording, stream_id: str, source: RtpSource) -> None:
        """The peer's SDP for a stream, new or again: keep or move the admitted source."""
        stream = recording.manifest.streams[stream_id]
        current, latched_before = stream.expectation()
        expected, latched = on_sdp(current, latched_before, _expected(source))
        live = recording.streams.get(stream_id)
        unchanged = expected == current and latched == latched_before
        stream.set_expectation(expected, latched)
        if live is not None and (not unchanged or live.receiver.pending is not None):
            # Also ends a wait for this SDP; a source latched now updates the manifest.
            live.receiver.expect(expected, latched)
        if unchanged:
            return
        # At info, the first SDP too: where a stream's audio is expected from is what an
        # engineer chasing one-way audio reads first (logs.render_json keeps it cheap).
        log.info("rtp_source_expected", recording_id=recording.manifest.recording_id,
                 stream_id=stream_id, address=expected.address, port=expected.port,
                 latched=None if latched is None else f"{latched.address}:{latched.port}")

    async def release(self, request: ReleaseRequest) -> Empty:
        recording = self.live.get(request.recording_id)
        if recording is None or recording.finalizing:
            return Empty()
        stream_id = check_plain_id(request.stream_id)
        live = recording.streams.pop(stream_id, None)
        if live is not None:
            self._close_stream(live)
        recording.manifest.streams.pop(stream_id, None)
        # In the file thread, after the stream's segment file was created and closed.
        self.files.submit(partial(_delete_segments, recording.directory, stream_id))
        if not recording.manifest.streams:
            del self.live[request.recording_id]
            self.journal.released(request.recording_id)
            await self._drop_encoder(recording)
            self.files.submit(partial(shutil.rmtree, recording.directory, ignore_errors=True))
            log.info("recording_released", recording_id=request.recording_id)
        else:
            self._journal(recording)
        return Empty()

    async def finalize(self, request: FinalizeRequest) -> Empty:
        recording = self.live.get(request.recording_id)
        if recording is None or recording.finalizing:
            return Empty()  # already done or never recorded: finalize is idempotent
        if request.metadata is not None:
            recording.manifest.metadata = request.metadata
        self._end(recording, request.ended_at)
        return Empty()

    async def health(self, _: Empty) -> CaptureHealth:
        ok, reason = await asyncio.to_thread(self.store.writable)
        if ok:
            ok, reason = await asyncio.to_thread(self._disk_ok)
        if ok and not self.jetstream[0]:
            ok, reason = self.jetstream
        free_ports = self.pool.free + len(self.reserved)
        if ok and free_ports < 2:
            ok, reason = False, "no free RTP ports"
        if ok and self.closing:
            ok, reason = False, "capture is shutting down"
        return CaptureHealth(
            can_record=ok,
            reason=reason,
            over_capacity=self._over_capacity(),
            active_recordings=len(self.live),
            active_streams=sum(len(r.streams) for r in self.live.values()),
            free_ports=free_ports,
            store_free_bytes=self.store.free_bytes(),
            quiet_streams=self._quiet_streams(),
            capture_id=self.capture_id,
        )

    def _live_lag(self) -> float:
        """capacity.live_lag of the calls in progress; 0 while there is none."""
        return live_lag(time.time(), self.live_encoded_to) if self.live else 0.0

    def _over_capacity(self) -> str | None:
        """Why new calls are refused, if the live lag is over the limit
        (capacity.LagGate), logging each change."""
        lag = self._live_lag()
        before = self.lag_gate.state
        state = self.lag_gate.update(lag)
        if state != before:
            log.warning("over_capacity" if state == "behind" else "capacity_recovered",
                        live_lag_s=round(lag, 2), max_live_lag_s=self.lag_gate.max_lag_s,
                        active_recordings=len(self.live))
        return self.lag_gate.reason(lag) if state == "behind" else None

    def _disk_ok(self) -> tuple[bool, str | None]:
        """The free-space reserve, with hysteresis (callrec.diskspace.ReserveGate)."""
        try:
            usage = shutil.disk_usage(self.root)
        except OSError as exc:
            return False, f"data dir unreadable: {exc}"
        before = self.reserve_gate.state
        state = self.reserve_gate.update(usage.free, usage.total)
        if state != before:
            log.warning("disk_reserve_" + ("reached" if state == "low" else "recovered"),
                        free_mib=usage.free // diskspace.MIB,
                        reserve_mib=self.config.reserve.bytes_for(usage.total) // diskspace.MIB)
        if state == "low":
            return False, self.reserve_gate.reason(usage.free, usage.total)
        return True, None

    async def _jetstream_loop(self) -> None:
        while True:
            await asyncio.sleep(JETSTREAM_POLL_INTERVAL)
            await self._poll_jetstream_once()

    async def _poll_jetstream_once(self) -> None:
        """New calls need room for their facts: refuse them (503) while JetStream does
        not answer or has nearly used its store budget (it then refuses writes)."""
        try:
            info = await asyncio.wait_for(self.ctx.js.account_info(), timeout=2.0)
            total = shutil.disk_usage(self.config.data_dir).total
            budget = diskspace.jetstream_budget(total)
            if diskspace.jetstream_nearly_full(info.storage, budget):
                state: tuple[bool, str | None] = (
                    False, f"event store nearly full: {info.storage // diskspace.MIB} MiB "
                           f"of {budget // diskspace.MIB} MiB")
            else:
                state = (True, None)
        except Exception as exc:
            state = (False, f"event store unavailable: {type(exc).__name__}")
        if state != self.jetstream:
            log.warning("jetstream_state", ok=state[0], reason=state[1])
        self.jetstream = state

    def _quiet_streams(self) -> list[QuietStream]:
        now = time.time()
        quiet = []
        for recording in self.live.values():
            if recording.finalizing:
                continue
            began = recording.manifest.started_at.timestamp()
            for stream_id, live in recording.streams.items():
                receiver = live.receiver
                silent = now - (receiver.last_arrival or began)
                if receiver.packets == 0 or silent >= QUIET_AFTER_S:
                    quiet.append(QuietStream(recording_id=recording.manifest.recording_id,
                                             stream_id=stream_id, packets=receiver.packets,
                                             silent_s=round(max(0.0, silent), 3)))
        return quiet

    # ---- streams -------------------------------------------------------------------

    def _bind_new(
        self, recording: LiveRecording, stream: StreamManifest, *, sdp_pending: bool
    ) -> int:
        for port in self.pool.candidates():
            try:
                self._open_stream(recording, stream, port, sdp_pending=sdp_pending,
                                  deferred=True)
            except OSError:
                continue
            return port
        raise PortsExhausted("no free RTP port in the configured range")

    def _open_stream(
        self, recording: LiveRecording, stream: StreamManifest, port: int,
        *, sdp_pending: bool = False, sock: socket.socket | None = None,
        deferred: bool = False, reserved: bool = False, answered_at: float | None = None,
    ) -> None:
        """Open (or, with `sock` from the keeper, resume) the stream's socket and its
        next segment file: `deferred` (call set-up), created by the file thread.
        `reserved`: `sock` (if any) is a reserved port's, and what reached it before
        `answered_at` is dropped."""
        kept = sock is not None and not reserved
        backlog = sock is not None
        if sock is None:
            sock = open_rtp_socket(self.config.bind, port)
        try:
            writer = (SegmentWriter.deferred(self.files, partial(_next_segment, recording,
                                                                 stream.stream_id))
                      if deferred else
                      SegmentWriter(_next_segment(recording, stream.stream_id)))
        except OSError:
            sock.close()
            if kept and self.keeper is not None:
                self.keeper.drop(port)
            raise
        if not kept and self.keeper is not None:
            self.keeper.hold(sock)  # from now on the socket outlives this process
        self.pool.take(port)
        stream.port = port
        started = recording.manifest.started_at.timestamp()
        expected, latched = stream.expectation()
        recording_id = recording.manifest.recording_id

        def on_latch(source: Endpoint) -> None:
            # Saved by the next flush, once per recording (a manifest write costs
            # more than a flush interval of a stream's packets).
            stream.set_latched(source)
            recording.manifest_dirty = True
            recording.changed()

        def on_drop(reason: DropReason) -> None:
            self.m_rejected.inc(reason=reason)

        receiver = StreamReceiver(
            writer, started, expected=expected, latched=latched, on_latch=on_latch,
            on_drop=on_drop, sdp_pending=sdp_pending,
            log=log.bind(recording_id=recording_id, stream_id=stream.stream_id, port=port),
        )
        if backlog:  # what arrived while nobody read the port, at the times it arrived
            receiver.drain(sock, not_before=answered_at if reserved else None)
        receiver.attach(sock, self.reader)
        recording.manifest.streams[stream.stream_id] = stream
        recording.streams[stream.stream_id] = LiveStream(stream, writer, receiver, kept)

    def _close_stream(self, live: LiveStream, recording: LiveRecording | None = None) -> None:
        live.receiver.settle(force=True)
        live.receiver.close()
        if self.keeper is not None:
            self.keeper.drop(live.manifest.port)
        # No fsync here: it would stall every live stream; the finalize worker syncs.
        if live.writer.ready:
            _close_writer(live.writer, recording)
        else:  # its file is not created yet: closed by the file thread, after that
            self.files.submit(partial(_close_writer, live.writer, recording))
        self.m_invalid.inc(live.receiver.invalid)
        self.m_dropped.inc(live.writer.dropped + live.receiver.overflow)
        self.pool.give_back(live.manifest.port)

    def _end(self, recording: LiveRecording, ended_at: datetime) -> None:
        """Stop recording and queue the finalize. Nothing here may fail: a recording
        marked finalizing is always queued (the worker saves what could not be saved
        now, e.g. on a full disk, and retries until it succeeds)."""
        recording.finalizing = True
        for live in recording.streams.values():
            self._close_stream(live, recording)
        recording.streams.clear()
        recording.manifest.ended_at = max(ended_at, recording.manifest.started_at)
        try:  # the end time is then safe from a crash; the next flush (or the
            self._journal(recording)  # finalize, whichever is first) saves the file
        except OSError as exc:
            log.error("manifest_write_failed", recording_id=recording.manifest.recording_id,
                      error=str(exc))
        self.queue.put_nowait(recording.manifest.recording_id)

    def _save_manifest(self, recording: LiveRecording) -> bool:
        """Save it here and now (shutdown): True if it was written."""
        return _write_manifest_of(recording, recording.manifest.snapshot())

    def _queue_manifest_save(self, recording: LiveRecording) -> None:
        """Save the manifest as it is now, in the file thread.

        A slow disk (a journal commit, a discard) must not stall the event loop: at
        200 calls/s a flush saves about 50 manifests, and on the event loop a stalled
        create or rename held up every allocate behind it (INVITE->200 p99 of a
        second). The file thread runs it after the recording's mkdir; the journal is
        cleared only once no save is pending, so a crash before it loses nothing."""
        saving = self.files.run(partial(_write_manifest_of, recording,
                                        recording.manifest.snapshot()))
        recording.manifest_dirty = False
        self.manifest_saves_pending += 1

        def saved(done: asyncio.Future[bool]) -> None:
            self.manifest_saves_pending -= 1
            if done.cancelled() or done.exception() is not None or not done.result():
                recording.manifest_dirty = True  # the next flush tries again

        saving.add_done_callback(saved)

    def _get(self, recording_id: str) -> LiveRecording:
        recording = self.live.get(recording_id)
        if recording is None:
            raise KeyError(f"unknown recording {recording_id}")
        return recording

    # ---- background loops ---------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            flushed_at = time.time()  # every packet received before is on disk after this
            unsaved = False
            for recording in list(self.live.values()):
                for live in recording.streams.values():
                    live.receiver.settle()
                    try:
                        written = live.writer.flush()
                    except OSError as exc:
                        if not recording.write_failing:  # once per episode, not per flush
                            log.error("segment_write_failed", recording_id=recording.manifest
                                      .recording_id, error=str(exc),
                                      buffered=len(live.writer.buffer))
                        recording.write_failing = True
                    else:
                        if recording.write_failing:
                            log.info("segment_write_recovered",
                                     recording_id=recording.manifest.recording_id)
                        recording.write_failing = False
                        if written:
                            recording.changed(segments=True)
                if recording.manifest_dirty:
                    self._queue_manifest_save(recording)
                unsaved = unsaved or recording.manifest_dirty
            if not unsaved and not self.manifest_saves_pending:
                self.journal.clear()  # every change journaled so far is in a manifest.json
            self._flushed_at = flushed_at
            self._flushed.set()

    async def _writeback_loop(self) -> None:
        """Every WRITEBACK_INTERVAL, start the kernel writing what the calls in progress
        appended to their segments, in a thread, without waiting for the disk. No
        durability is promised by it (the fsync at finalize still makes the packets
        durable); it spreads that writing over the call, so a burst of endings does not
        write up to 30 s of every call's packets at once."""
        if not writeback.available():
            return
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(WRITEBACK_INTERVAL)
            paths = [live.writer.path for recording in list(self.live.values())
                     for live in recording.streams.values()
                     if live.writer.ready and live.writer.path.parts]
            if paths:
                started = await loop.run_in_executor(self.writeback,
                                                     writeback.start_writebacks, paths)
                self.m_writebacks.inc(started)

    async def _live_loop(self) -> None:
        """After each flush, encode what the segments got into each call's live.opus.

        In the worker processes (the receive path only appends to segments and never
        waits for this); a step that takes longer than a flush interval just makes the
        next one cover more.
        """
        next_step_at = 0.0
        while True:
            await self._flushed.wait()
            self._flushed.clear()
            flushed_at = self._flushed_at
            if flushed_at < next_step_at:
                continue  # a flush between steps: the step waits for a fresh one
            batches = self._live_batches()
            if not batches:
                self.live_encoded_to = flushed_at  # nothing to encode: caught up
                continue
            started = time.monotonic()
            await asyncio.gather(*(self._live_steps(batch, flushed_at)
                                   for batch in batches.values()))
            self.m_live_seconds.inc(time.monotonic() - started)
            self.live_encoded_to = flushed_at
            next_step_at = live_step_due(flushed_at)

    def _live_batches(self) -> dict[int, list[LiveRecording]]:
        """The recordings a live step could add audio to, by worker."""
        batches: dict[int, list[LiveRecording]] = {}
        for recording in self.live.values():
            # (directory_made: the file thread's mkdir of a new call may be queued)
            if (not recording.finalizing and recording.directory_made
                    and recording.live_step_wanted):
                batches.setdefault(self._worker_index(recording.manifest.recording_id),
                                   []).append(recording)
        return batches

    async def _live_steps(self, batch: list[LiveRecording], flushed_at: float) -> None:
        """One step of each recording of one worker, in round trips of about
        LIVE_CHUNK_SECONDS (live_chunk_size: fewer and larger when the steps are
        cheap and many, never much over LIVE_CHUNK_CEILING_SECONDS).

        A recording whose call ends (or is released) meanwhile is left out of the
        chunks still to go: its finish, queued on the same worker, encodes the rest.
        """
        index = self._worker_index(batch[0].manifest.recording_id)
        start = 0
        while start < len(batch):
            size = live_chunk_size(self.step_seconds.get(index, FIRST_STEP_SECONDS),
                                   len(batch))
            chunk = [r for r in batch[start:start + size]
                     if not r.finalizing and self.live.get(r.manifest.recording_id) is r]
            start += size
            if chunk:
                began = time.monotonic()
                await self._live_chunk(chunk, flushed_at)
                self.step_seconds[index] = (time.monotonic() - began) / len(chunk)

    async def _live_chunk(self, batch: list[LiveRecording], flushed_at: float) -> None:
        """One step of each of these recordings of one worker, in a single round trip."""
        jobs: list[StepJob] = [
            (r.directory, r.manifest.recording_id, stream_specs(r.manifest),
             (flushed_at - r.manifest.started_at.timestamp()) * 1000.0,
             self.config.opus_bitrate, self.config.opus_mode)
            for r in batch
        ]
        revisions = [r.revision for r in batch]  # what the worker will have seen, at least
        self.m_live_steps.inc(len(jobs))
        try:
            results = await self._in_worker(batch[0].manifest.recording_id, worker_steps, jobs)
        except Exception:
            log.exception("live_encode_failed", recordings=len(jobs))
            self.m_live_errors.inc(len(jobs))
            return
        grew: list[tuple[str, Progress]] = []
        for recording, revision, (progress, grown, error, drained) in zip(
                batch, revisions, results, strict=True):
            recording_id = recording.manifest.recording_id
            if error is not None:  # the next step starts again from disk
                log.error("live_encode_failed", recording_id=recording_id, error=error)
                self.m_live_errors.inc()
                continue
            if drained:
                recording.drained_at = revision
            if progress is not None:
                self.m_live_bytes.inc(grown)
                grew.append((recording_id, progress))
        await self._publish_progress(grew)

    def _worker_index(self, recording_id: str) -> int:
        return zlib.crc32(recording_id.encode()) % len(self.workers)

    async def _in_worker(self, recording_id: str, fn: Callable[..., _T], *args: object) -> _T:
        """Run ``fn`` on the recording's worker; a dead worker is replaced (once)."""
        index = self._worker_index(recording_id)
        worker = self.workers[index]
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(worker, fn, *args)
        except BrokenProcessPool:
            # Killed (e.g. by the OOM killer): its recordings resume from disk.
            if self.workers[index] is worker:  # not replaced yet by a concurrent call
                log.error("capture_worker_died", worker=index)
                self.workers[index] = self._new_worker()
                worker.shutdown(wait=False, cancel_futures=True)
            return await loop.run_in_executor(self.workers[index], fn, *args)

    async def _publish_progress(self, grew: list[tuple[str, Progress]]) -> None:
        """Tell peers how far these recordings' live files reached: one message per
        round of steps (LiveProgressBatch), not one per recording."""
        node_id = self.ctx.node_id
        for start in range(0, len(grew), MAX_PROGRESS_BATCH):
            message = LiveProgressBatch(node_id=node_id, updates=[
                LiveProgress(recording_id=recording_id, node_id=node_id,
                             bytes=progress.bytes, duration_ms=progress.duration_ms,
                             final=progress.final)
                for recording_id, progress in grew[start:start + MAX_PROGRESS_BATCH]])
            try:
                await self.ctx.nc.publish(subjects.live_batch(node_id),
                                          message.model_dump_json().encode())
            except Exception as exc:  # progress is advisory: peers catch up on the next one
                log.debug("live_progress_not_published", recordings=len(message.updates),
                          error=str(exc))

    async def _drop_encoder(self, recording: LiveRecording) -> None:
        with contextlib.suppress(Exception):
            await self._in_worker(recording.manifest.recording_id, worker_drop,
                                  recording.manifest.recording_id)

    async def _reconcile_loop(self) -> None:
        """Finish recordings whose call signaling no longer knows (crash, lost BYE)."""
        await asyncio.sleep(1.0)
        while True:
            candidates = [r for r in self.live.values() if not r.finalizing]
            if candidates:
                try:
                    reply = await bus.call(
                        self.ctx.nc,
                        subjects.rpc(self.ctx.node_id, subjects.SIGNALING,
                                     subjects.SIGNALING_ACTIVE),
                        Empty(), ActiveRecordings, timeout=2.0,
                    )
                except bus.RpcError as exc:
                    log.debug("reconcile_skipped", error=str(exc))
                    reply = None
                if reply is not None:
                    known = set(reply.recording_ids)
                    now = datetime.now(UTC)
                    for recording in candidates:
                        manifest = recording.manifest
                        if manifest.recording_id in known or recording.finalizing:
                            continue
                        if not manifest.recovered and now - manifest.started_at < RECONCILE_GRACE:
                            continue
                        log.warning("recording_orphaned", recording_id=manifest.recording_id)
                        self._end(recording, self._last_packet_time(recording) or now)
            # The media timeout is signaling's (it knows holds, ends the leg with a BYE
            # and frees the licence): health() reports the quiet streams it needs.
            await asyncio.sleep(RECONCILE_INTERVAL)

    def _last_packet_time(self, recording: LiveRecording) -> datetime | None:
        latest = max((s.receiver.last_arrival for s in recording.streams.values()), default=0.0)
        if latest:
            return datetime.fromtimestamp(latest, UTC)
        last_ms = -1
        for stream_id in recording.manifest.streams:
            tail = SegmentTail(recording.directory, stream_id)  # a piece at a time
            for arrival_ms, _ in tail.read(None):
                last_ms = max(last_ms, arrival_ms)
        if last_ms < 0:
            return None
        return recording.manifest.started_at + timedelta(milliseconds=last_ms)

    async def _finalize_loop(self) -> None:
        """Finalize queued recordings, several at once (finalize_concurrency(): each
        one mostly waits on fsyncs, its worker and the bus acks, so one at a time
        made the backlog of 400 calls ending together take seconds).

        A failure re-queues the recording after a back-off
        (callrec.diskspace.retry_delay), so one never strands: a full disk or an
        unavailable bus is retried until it succeeds, also after a restart (the
        manifest on disk says the recording ended). Only an error that is not
        transient, PERMANENT_ATTEMPTS times in a row, gives it up as failed.
        Cancelling this task cancels every finalizer."""
        async with asyncio.TaskGroup() as group:
            for _ in range(finalize_concurrency(len(self.workers))):
                group.create_task(self._finalizer())

    async def _finalizer(self) -> None:
        """One of the finalize tasks: takes the next queued recording, never one that
        another task is finalizing (a duplicate queue entry is dropped: that task
        either completes it or re-queues it itself when it fails). Their capture-side
        work takes turns (finalize_slots); their encoder work batches per worker."""
        while True:
            recording_id = await self.queue.get()
            recording = self.live.get(recording_id)
            if recording is None or recording_id in self.finalizing_now:
                continue
            self.finalizing_now.add(recording_id)
            try:
                if recording_id in self.giving_up:
                    await self._give_up(recording)
                else:
                    await self._finalize_one(recording)
                self.attempts.pop(recording_id, None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._retry_later(recording, exc)
            finally:
                self.finalizing_now.discard(recording_id)

    def _retry_later(self, recording: LiveRecording, exc: Exception) -> None:
        recording_id = recording.manifest.recording_id
        attempt = self.attempts.get(recording_id, 0) + 1
        self.attempts[recording_id] = attempt
        out_of_space = diskspace.is_out_of_space(exc)
        transient = out_of_space or _is_transient(exc, recording.directory)
        if not transient and attempt >= PERMANENT_ATTEMPTS:
            self.giving_up.add(recording_id)
        delay = diskspace.retry_delay(attempt)
        reason = "disk_full" if out_of_space else "transient" if transient else "error"
        self.m_retries.inc(reason=reason)
        (log.warning if transient else log.error)(
            "finalize_retry", recording_id=recording_id, attempt=attempt, reason=reason,
            retry_in_s=delay, error=f"{type(exc).__name__}: {exc}",
            exc_info=not transient)
        asyncio.get_running_loop().call_later(delay, self._requeue, recording_id)

    def _requeue(self, recording_id: str) -> None:
        if recording_id in self.live and not self.closing:
            self.queue.put_nowait(recording_id)

    async def _give_up(self, recording: LiveRecording) -> None:
        """Publish recording.failed (retried like a finalize) and keep the raw packets."""
        recording_id = recording.manifest.recording_id
        await bus.publish_event(
            self.ctx.js,
            RecordingFailed(node_id=self.ctx.node_id, recording_id=recording_id,
                            reason=f"finalize failed {PERMANENT_ATTEMPTS} times"),
        )
        log.error("finalize_failed", recording_id=recording_id)
        self.m_failed.inc()
        self.giving_up.discard(recording_id)
        self.live.pop(recording_id, None)
        await self._drop_encoder(recording)
        self._move_to_failed(recording.directory)

    async def _finalize_one(self, recording: LiveRecording) -> None:
        manifest = recording.manifest
        # Wall time of each step, logged with the completion: where finalize waits.
        lap = _Lap({}, time.monotonic())
        async with self.finalize_slots.slot():
            lap("slot")
            # After the file thread's work for it (directory, segment files, closes),
            # in that thread: what a full disk kept from being written when the call
            # ended, then the manifest with its end time (idempotent on a retry). Not
            # on the event loop: a slow disk must not hold up new calls' allocates.
            await self.files.run(partial(_write_out_end, recording, manifest.snapshot()))
            recording.manifest_dirty = False
            lap("barrier")
            started = time.monotonic()
            await self._finalize_file_work(sync_segments, recording.directory)
            lap("sync")
        # The recording's own live.opus is the output: never deleted on a failure (a
        # retry continues it, and peers' copies of its bytes stay valid).
        await self._encode_and_publish(recording, recording.directory / LIVE_FILE, started,
                                       lap)

    async def _encode_and_publish(
        self, recording: LiveRecording, output: Path, started: float, lap: _Lap,
    ) -> None:
        """The worker's finish (batched with others of its worker), then, in a
        capture-side slot, storing the file, the events and the clean-up."""
        manifest = recording.manifest
        result = await self.finishes.finish(
            self._worker_index(manifest.recording_id),
            (recording.directory, manifest.recording_id, stream_specs(manifest),
             duration_of(manifest), self.config.opus_bitrate, self.config.opus_mode))
        lap("encode")
        # The file is whole now: a peer that copies the call as it goes pulls these last
        # pages with its other copies' steps (one request for many) while this node
        # stores the file, and its fetch after the completion finds nothing left to
        # ask for. Announced only after storing, each peer fetched each recording's
        # tail alone: 400 requests in a burst of 400 endings (bench/README.md, "The
        # last pages with the live steps").
        with contextlib.suppress(OSError):  # no file to announce: storing it says why
            await self._publish_progress([(manifest.recording_id,
                                           Progress(output.stat().st_size,
                                                    result.duration_ms, final=True))])
        async with self.finalize_slots.slot():
            lap("slot2")
            size = await self._store_and_publish(recording, output, result, lap)
        elapsed = time.monotonic() - started
        self.m_completed.inc()
        self.m_finalize_seconds.inc(elapsed)
        log.info("recording_completed", recording_id=manifest.recording_id,
                 duration_ms=result.duration_ms, size=size, finalize_s=round(elapsed, 3),
                 packets=[c.packets_received for c in result.channels], steps_ms=lap.steps)

    async def _store_and_publish(self, recording: LiveRecording, output: Path,
                                 result: FinalizeResult, lap: _Lap) -> int:
        """Store the file, publish its completion, clean up; returns its size."""
        manifest = recording.manifest
        key = _object_key(manifest.recording_id, manifest.started_at)
        sha256 = await self._finalize_file_work(self.store.adopt_file, key, output)
        lap("store")
        size = output.stat().st_size
        assert manifest.ended_at is not None
        event = RecordingCompleted(
            event_id=completed_event_id(manifest.recording_id),
            node_id=self.ctx.node_id,
            recording_id=manifest.recording_id,
            started_at=manifest.started_at,
            ended_at=manifest.ended_at,
            duration_ms=result.duration_ms,
            object_key=key,
            size_bytes=size,
            sha256=sha256,
            channels=result.channels,
            metadata=manifest.metadata,
            recovered=manifest.recovered,
        )
        if result.peaks is not None:
            # Before the completion, so a page that sees the recording finds its drawing.
            await bus.publish_event(self.ctx.js, RecordingWaveformComputed(
                event_id=waveform_event_id(manifest.recording_id),
                node_id=self.ctx.node_id,
                recording_id=manifest.recording_id,
                duration_ms=result.duration_ms,
                peaks=result.peaks,
            ))
        await bus.publish_event(self.ctx.js, event)
        lap("publish")
        self._count_silent(manifest.recording_id, result)
        # (worker_finish forgot the recording's encoder already: no round trip to
        # its worker, which may be busy with a live step, to drop it again)
        self.live.pop(manifest.recording_id, None)
        # Out of recovery's way now, in a thread (a rename waits on the journal); its
        # removal waits until no finalize does (finished.py).
        await self._finalize_file_work(finished.set_aside, recording.directory,
                                       self.finished_dir)
        self.removals_due.set()
        lap("clean")
        return size

    async def _removal_loop(self) -> None:
        """Remove the directories of stored recordings once no finalize is queued or
        running (or they waited finished.MAX_WAIT_S), all in one trip to a thread."""
        loop = asyncio.get_running_loop()
        while True:
            await self.removals_due.wait()
            since = loop.time()
            while not finished.removal_due(self.queue.qsize() + len(self.finalizing_now),
                                           loop.time() - since, finished.MAX_WAIT_S):
                await asyncio.sleep(finished.POLL_S)
            self.removals_due.clear()
            removed = await asyncio.to_thread(finished.remove_all, self.finished_dir)
            log.debug("finished_directories_removed", directories=removed)

    async def _finalize_file_work(self, fn: Callable[..., _T], *args: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self.finalize_files, fn, *args)

    def _count_silent(self, recording_id: str, result: FinalizeResult) -> None:
        """Make a channel that got packets but no audio visible (metric and log)."""
        for channel in result.channels:
            self.m_undecodable.inc(channel.unknown_payload)
            if channel.silent_reason is None:
                continue
            self.m_silent.inc(reason=channel.silent_reason)
            if channel.silent_reason != "no_packets":
                log.warning("channel_without_audio", recording_id=recording_id,
                            stream_id=channel.stream_id, reason=channel.silent_reason,
                            packets=channel.packets_received,
                            unknown_payload_types=channel.unknown_payload_types)

    def _move_to_failed(self, directory: Path) -> None:
        target = self.failed_dir / directory.name
        with contextlib.suppress(OSError):
            shutil.rmtree(target, ignore_errors=True)
            shutil.move(str(directory), str(target))


class _Lap:
    """Records the milliseconds since the previous lap under a step's name."""

    def __init__(self, steps: dict[str, float], started: float) -> None:
        self.steps = steps
        self.last = started

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        self.steps[name] = round((now - self.last) * 1000.0, 1)
        self.last = now


def _is_transient(exc: BaseException, directory: Path) -> bool:
    """Worth retrying as long as it takes: I/O (while the recording's files are
    there), time-outs, the bus, a dead worker process."""
    if isinstance(exc, OSError):
        return directory.is_dir()
    return isinstance(exc, TimeoutError | BrokenProcessPool | nats.errors.Error
                      | bus.RpcError)


def _expected(source: RtpSource) -> Expected:
    return expected_from_sdp(source.address, source.port)


def _object_key(recording_id: str, started_at: datetime) -> str:
    day = started_at.astimezone(UTC)
    return f"recordings/{day:%Y/%m/%d}/{check_plain_id(recording_id)}.opus"


def finalize_concurrency(workers: int) -> int:
    """How many recordings are finalized at once: a few per encoder worker, so its
    process always has the next tail to encode while the others wait on fsyncs and
    bus acks; bounded, so a burst of endings does not pile up open files and
    unacknowledged publishes."""
    return FINALIZE_PER_WORKER * max(1, workers)


def finalize_may_widen(now: float, recent_allocates: Sequence[float]) -> bool:
    """Whether several finalizes may do their capture-side work at once now: unless
    calls are being set up in a burst, SETUP_BURST_ALLOCATES allocates (of which
    ``recent_allocates`` holds the times, oldest first) within SETUP_QUIET_S
    (CaptureSideSlots). That work (segment syncs, storing the file, the directory
    removal, the events) shares capture's process with allocate, and a PBX waits on
    set-up. Calls set up one by one as others end (a few a second, the steady state
    of a busy site) are not a burst: narrowing for each of them starved finalize there
    (bench/churn.py, 400 calls of 60 s: the capture-side slots waited 1.5 s twice)."""
    return (len(recent_allocates) < SETUP_BURST_ALLOCATES
            or now - recent_allocates[0] >= SETUP_QUIET_S)


def live_chunk_size(seconds_per_step: float, steps: int) -> int:
    """How many of a worker's ``steps`` live steps go in one round trip when its last
    round trip took ``seconds_per_step`` a step (waiting included): about
    LIVE_CHUNK_SECONDS; at least LIVE_CHUNK_MIN and a LIVE_CHUNKS_MAX-th of them
    (cheap steps, many calls), unless that would pass LIVE_CHUNK_CEILING_SECONDS."""
    if seconds_per_step <= 0:
        return 1 << 20
    by_time = int(LIVE_CHUNK_SECONDS / seconds_per_step)
    by_count = max(LIVE_CHUNK_MIN, -(-steps // LIVE_CHUNKS_MAX))
    ceiling = int(LIVE_CHUNK_CEILING_SECONDS / seconds_per_step)
    return max(1, by_time, min(by_count, ceiling))


def live_step_due(flushed_at: float) -> float:
    """The earliest flush the next live step may take, given this step's flush.

    A step runs right after a flush, never on one that happened while it waited
    (its data would be a flush interval older): how far a peer is behind the call
    is then the emit delay plus one step interval, which a lost host costs."""
    return flushed_at + LIVE_STEP_INTERVAL - FLUSH_INTERVAL / 2


def lower_worker_priority() -> None:
    """Run an encoder worker only on CPU nobody else wants (SCHED_IDLE), else niced.

    Why: at 200 new calls/s signaling's and capture's set-up work is what a PBX waits
    for (INVITE->200); with a plain nice the workers' finalize backlog still took a
    share of both cores and pushed that p99 to seconds. Encoding can wait: its input
    is on disk."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or not allowed: the old nice
        os.nice(WORKER_NICE)


async def main(ctx: ServiceContext) -> None:
    # Calls are encoded while they are recorded, a live step (0.5 s) at a time, so the
    # cost is spread evenly and finalize is only the last half second. Encoding takes
    # about 1.4 % of a core per call, so it runs in one worker process per core,
    # never under this process's GIL: reception stays alone on this event loop.
    context = multiprocessing.get_context("forkserver")

    def new_worker() -> Executor:
        # Idle priority: under CPU pressure call set-up and reception (real time) go
        # first; encoding only lags and catches up, bounded by what the segments hold.
        return ProcessPoolExecutor(max_workers=1, mp_context=context,
                                   initializer=lower_worker_priority)

    # A socket and a segment file per stream, and signaling's port reserve: well over
    # the 1,024 a service manager often gives by default.
    log.info("open_files_limit", soft=raise_open_files())
    # Compiled where set-up had a C compiler and the source is unchanged since: an
    # operator comparing two nodes' CPU sees why one spends more (callrec/native.py).
    log.info("native_modules", **native.install())
    workers = [new_worker() for _ in range(max(1, os.cpu_count() or 1))]
    capture = Capture(ctx, open_store(ctx.config.data_dir), workers, new_worker)
    try:
        await capture.run()
    finally:
        for worker in capture.workers:
            worker.shutdown(wait=True, cancel_futures=True)


# ---- file work (run by the FileWork thread, in submission order) -------------------

def _make_directory(recording: LiveRecording) -> None:
    try:
        recording.directory.mkdir()
        recording.fresh = True
    except FileExistsError:  # left by an earlier process: may hold segments
        recording.fresh = False
    recording.directory_made = True


def _write_manifest_of(recording: LiveRecording, manifest: bytes) -> bool:
    """Write a snapshot of the recording's manifest; False (logged) if it could not
    be, or (quietly) if its directory is not made yet: the next flush tries again."""
    if not recording.directory_made:  # its mkdir failed or is queued: a segment retries
        return False
    try:
        write_manifest(recording.directory, manifest)
    except OSError as exc:
        log.error("manifest_write_failed", recording_id=recording.manifest.recording_id,
                  error=str(exc))
        return False
    return True


def _write_out_end(recording: LiveRecording, manifest: bytes) -> None:
    """The last packets a full disk kept in memory when the call ended, then the
    manifest (a snapshot with its end time): what finalize reads."""
    if not recording.directory.is_dir():
        raise ValueError(f"recording directory {recording.directory} is gone")
    while recording.unflushed:
        recording.unflushed[0].close(sync=False)
        recording.unflushed.pop(0)
    write_manifest(recording.directory, manifest)


def _next_segment(recording: LiveRecording, stream_id: str) -> Path:
    """A directory this process created has no old segments (release deletes a
    stream's): no need to list it for the next segment number."""
    if recording.fresh:
        return segment_path(recording.directory, stream_id, 0)
    if not recording.directory_made:  # its mkdir failed: try again with the segment
        recording.directory.mkdir(exist_ok=True)
        recording.directory_made = True
    return segment_path(recording.directory, stream_id,
                        next_segment_index(recording.directory, stream_id))


def _close_writer(writer: SegmentWriter, recording: LiveRecording | None) -> None:
    try:
        writer.close(sync=False)
    except OSError as exc:
        # A full disk (or a file never created): the unwritten packets stay in the
        # writer's buffer; the finalize worker writes them out (retrying, creating
        # the file) before it reads the segments.
        log.warning("segment_close_deferred", path=str(writer.path), error=str(exc))
        if recording is not None:
            recording.unflushed.append(writer)


def _delete_segments(directory: Path, stream_id: str) -> None:
    for path in directory.glob(f"{stream_id}.*.seg"):
        path.unlink(missing_ok=True)
