"""Sync service: presence, peer discovery and recording replication between nodes.

Heartbeats (core NATS, once a second) tell peers and the scheduler that this node is
alive; recordings in progress on other nodes are replicated while they are recorded
(live byte ranges of their Ogg/Opus file, pulled after each LiveProgress) and taken
over as interrupted, provisional recordings when their origin falls silent (`live`);
a heartbeat from an unknown node makes our CLUSTER stream source its events,
so a node added months later is found and caught up with no configuration. From the
cluster's recording facts we keep a holder map and pull every object we lack from a
holder, chunk by chunk, then announce `recording.replicated`; a purge in effect (the
hold-wins rule of `contracts.v1.holds`) deletes our copy, and a hold that voids it
later brings the copy back from a node that kept it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from callrec import bus
from callrec.service import ServiceContext
from callrec.store import ObjectStore, open_store
from contracts import subjects
from contracts.v1.audit import EMPTY_HEAD, AuditHead
from contracts.v1.events import (
    AuditRecorded,
    RecordingCompleted,
    RecordingReplicated,
    RecordingStarted,
    type_of,
)
from contracts.v1.rpc import (
    MAX_LIVE_RANGES,
    Empty,
    LiveProgress,
    LiveRange,
    NodeStatus,
    PeerLag,
    SyncStatus,
)

from .domain import (
    REPLICA_FACTS,
    Discard,
    Fetch,
    PeerTable,
    Purge,
    Replica,
    ReplicaMap,
    backoff,
    stalled_sources,
)
from .live import LIVE_FACTS, Live, LiveBook, progress_of
from .ogg import Chain, follow_file
from .state import live_path, load_checkpoint, part_path, save_checkpoint
from .takeover import build_takeover, takeover_event_id, takeover_key, takeover_timeout
from .transfer import (
    CHUNK_BYTES,
    REQUEST_TIMEOUT_S,
    Outcome,
    TransferError,
    holds,
    pull_object,
    read_live_ranges,
    serve_live_ranges,
    serve_read,
    store_whole_part,
)

HEARTBEAT_INTERVAL = 1.0
SOURCE_CHECK_INTERVAL = 3.0
CHECKPOINT_INTERVAL = 1.0
TAKEOVER_CHECK_INTERVAL = 1.0
# Fetches at once: each waits mostly on round trips (the holder's read, the bus's ack
# of its announcement) and the store's fsync, so 400 completions arriving together
# need more than a few side by side (bench/README.md, "The peer's fetches").
PARALLEL_FETCHES = 8
# The types the replica map and the live book apply, and only those: a burst of
# endings also brings each recording's waveform, which sync would parse for nothing.
FOLLOWED_TYPES: tuple[str, ...] = tuple(sorted({type_of(e) for e in REPLICA_FACTS + LIVE_FACTS}))
EVENT_NAMESPACE = uuid.UUID("0b8f5f0e-4a4e-4f7e-9d55-3c2f1d6b7a21")

log = structlog.get_logger()


def replicated_event_id(recording_id: str, node_id: str) -> str:
    """Deterministic, so announcing the same copy again is a duplicate, not a new fact."""
    return uuid.uuid5(EVENT_NAMESPACE, f"recording.replicated:{recording_id}:{node_id}").hex


def heartbeat_payload(ctx: ServiceContext, sequence: int, held: int = 0,
                      pending: dict[str, int] | None = None,
                      lag: list[PeerLag] | None = None,
                      audit_head: AuditHead | None = None) -> bytes:
    config = ctx.config
    return json.dumps({
        "audit_head": audit_head.model_dump() if audit_head is not None else None,
        "lag": [entry.model_dump() for entry in lag or []],
        "node_id": config.node_id,
        "role": config.role,
        "priority": config.priority,
        "sequence": sequence,
        "sent_at": time.time(),
        "recordings_held": held,
        "pending_objects": pending or {},
    }).encode()


class Sync:
    def __init__(self, ctx: ServiceContext, store: ObjectStore) -> None:
        self.ctx = ctx
        self.me = ctx.node_id
        self.store = store
        self.root = ctx.config.data_dir / "sync"
        self.root.mkdir(parents=True, exist_ok=True)
        self.replicas = ReplicaMap(self.me)
        self.peers = PeerTable()
        self.sourced: set[str] = set()
        self.sourcing = asyncio.Lock()
        self.kicked: dict[str, float] = {}
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.queued: set[str] = set()
        self.active: set[str] = set()
        self.attempts: dict[str, int] = {}
        self.avoid: dict[str, set[str]] = {}
        self.loaded_checkpoint = load_checkpoint(self.root)
        self.saved_checkpoint = self.loaded_checkpoint
        self.tasks: set[asyncio.Task[Any]] = set()
        self.live = LiveBook(self.me)
        self._part_keys: dict[str, str] = {}
        self.pulling: set[str] = set()  # in a request, or being written
        self.pull_due: dict[str, set[str]] = {}  # origin -> recordings with bytes to pull
        self.pullers: set[str] = set()  # origins with a pull loop running
        self.completed_live: set[str] = set()  # followed, completed by their origin
        self.audit_head: AuditHead | None = None
        self.capture_root = ctx.config.data_dir / "capture"
        self.takeover_timeout = takeover_timeout(ctx.config.role_timeout_s)
        m = ctx.metrics
        self.m_replicated = m.counter("sync_objects_replicated_total",
                                      "objects fetched from peers and stored")
        self.m_bytes = m.counter("sync_bytes_replicated_total", "bytes fetched from peers")
        self.m_failures = m.counter("sync_fetch_failures_total",
                                    "fetch attempts that failed (no answer, bad content)")
        self.m_restores = m.counter("sync_restores_total",
                                    "copies fetched back because a legal hold voided a purge")
        self.m_heartbeats = m.counter("sync_heartbeats_sent_total", "heartbeats published")
        self.m_live_bytes = m.counter("sync_live_bytes_total",
                                      "bytes of recordings in progress pulled from their origin")
        self.m_live_errors = m.counter("sync_live_pull_failures_total",
                                       "live range pulls the origin did not answer")
        self.m_live_requests = m.counter(
            "sync_live_pull_requests_total",
            "requests for new bytes of recordings in progress (each asks for many)")
        self.m_live_ranges = m.counter(
            "sync_live_pull_ranges_total",
            "recordings' ranges asked for in those requests")
        self.m_live_breaks = m.counter(
            "sync_live_copy_discarded_total",
            "live copies dropped and pulled again: a pulled range broke their Ogg page chain")
        self.m_live_dropped = m.counter("sync_live_progress_dropped_total",
                                        "live progress messages dropped (malformed, spoofed)")
        self.m_takeovers = m.counter("sync_takeovers_total",
                                     "recordings taken over after their origin fell silent")
        self.m_discards = m.counter("sync_losers_discarded_total",
                                    "copies deleted because a better copy of the call won")
        m.gauge("sync_live_recordings", "recordings in progress elsewhere being replicated",
                lambda: float(len(self.live.live)))
        m.gauge("sync_pending_objects", "objects still to fetch",
                lambda: float(len(self.replicas.wanted)))
        m.gauge("sync_recordings_held", "recordings whose object this node holds",
                lambda: float(self.replicas.recordings_held()))
        m.gauge("sync_peers", "other nodes heard from",
                lambda: float(len([n for n in self.peers.entries if n != self.me])))
        m.gauge("sync_checkpoint_sequence", "CLUSTER sequence fully handled",
                lambda: float(self._checkpoint_value()))

    # ---- life cycle ---------------------------------------------------------------

    async def run(self) -> None:
        nc, me = self.ctx.nc, self.me
        await nc.subscribe(subjects.all_heartbeats(), cb=self._on_heartbeat)
        await nc.subscribe(subjects.rpc(me, subjects.SYNC, subjects.SYNC_READ),
                           cb=self._on_read)
        await nc.subscribe(subjects.rpc(me, subjects.SYNC, subjects.SYNC_READ_LIVE),
                           cb=self._on_read_live)
        await nc.subscribe(subjects.all_live_batches(), cb=self._on_live)
        await nc.subscribe(subjects.all_live(), cb=self._on_live)
        log.info("sync_live", takeover_timeout_s=self.takeover_timeout)
        await bus.serve(nc, subjects.rpc(me, subjects.SYNC, subjects.SYNC_STATUS),
                        Empty, self.status)
        log.info("sync_replay", checkpoint=self.loaded_checkpoint)
        followed = [subjects.events_of_type(event_type) for event_type in FOLLOWED_TYPES]
        self._spawn(bus.follow_events(self.ctx.js, me, followed, 1, self._apply))
        for _ in range(PARALLEL_FETCHES):
            self._spawn(self._fetch_worker())
        self._spawn(self._checkpoint_loop())
        self._spawn(self._source_watchdog())
        self._spawn(self._takeover_loop())
        await self._heartbeat_loop()
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(BaseException):
                await task
        self._save_checkpoint()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("sync_task_failed", error=repr(task.exception()))

    # ---- heartbeats and peers -----------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        sequence = 0
        stopping = self.ctx.stopping
        while not stopping.is_set():
            sequence += 1
            if self.ctx.nc.is_connected:
                lag: list[PeerLag] = []
                with contextlib.suppress(Exception):
                    lag = await self._lag()
                payload = heartbeat_payload(self.ctx, sequence, self.replicas.recordings_held(),
                                            self.replicas.pending_by_origin(), lag,
                                            await self._audit_head())
                with contextlib.suppress(Exception):
                    await self.ctx.nc.publish(subjects.heartbeat(self.me), payload)
                    self.m_heartbeats.inc()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=HEARTBEAT_INTERVAL)

    async def _audit_head(self) -> AuditHead | None:
        """This node's audit chain head as stored (the last `audit.recorded` of ours),
        announced so every peer can check its copy of our chain against it."""
        try:
            msg = await self.ctx.js.get_last_msg(
                subjects.CLUSTER_STREAM, subjects.event(self.me, "audit.recorded"))
            entry = AuditRecorded.model_validate_json(msg.data or b"")
            self.audit_head = AuditHead(seq=entry.seq, hash=entry.hash)
        except NotFoundError:
            self.audit_head = EMPTY_HEAD
        except Exception as exc:  # JetStream busy, or an undecodable entry: say what we knew
            log.debug("audit_head_unknown", error=str(exc)[:200])
        return self.audit_head

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            payload = json.loads(msg.data)
            node_id = subjects.check_node_id(str(payload["node_id"]))
        except (ValueError, KeyError, TypeError):
            return
        if not isinstance(payload, dict):
            return
        if self.peers.heard(node_id, time.monotonic(), payload) and node_id != self.me:
            log.info("peer_discovered", peer=node_id)
            self._spawn(self._source_peer(node_id))

    async def _source_peer(self, peer: str) -> None:
        """Make CLUSTER source the peer's events; retried until it works (once per peer)."""
        attempt = 0
        while peer not in self.sourced:
            attempt += 1
            try:
                async with self.sourcing:
                    added = await bus.add_peer_source(self.ctx.js, peer)
                self.sourced.add(peer)
                log.info("peer_sourced", peer=peer, added=added)
            except Exception as exc:
                log.warning("peer_source_retry", peer=peer, error=str(exc))
                await asyncio.sleep(backoff(attempt))

    async def _source_infos(self) -> dict[str, tuple[int | None, float | None]]:
        """CLUSTER's sources by peer: (events lag, seconds since last contact)."""
        info = await self.ctx.js.stream_info(subjects.CLUSTER_STREAM)
        result: dict[str, tuple[int | None, float | None]] = {}
        for source in info.sources or []:
            active = source.active
            contact = active / 1e9 if active is not None and active >= 0 else None
            result[source.name] = (source.lag, contact)
        return result

    async def _source_watchdog(self) -> None:
        """Re-create a peer's source when the peer is heard but its events are not."""
        while True:
            await asyncio.sleep(SOURCE_CHECK_INTERVAL)
            now = time.monotonic()
            timeout = self.ctx.config.role_timeout_s
            alive = [p for p in self.sourced if self.peers.alive(p, now, timeout)]
            if not alive:
                continue
            try:
                infos = await self._source_infos()
            except Exception as exc:
                log.debug("source_check_failed", error=str(exc))
                continue
            contact = {p: infos[subjects.events_stream(p)][1] for p in alive
                       if subjects.events_stream(p) in infos}
            for peer in stalled_sources(alive, contact, now, self.kicked):
                self.kicked[peer] = now
                try:
                    async with self.sourcing:
                        await restart_peer_source(self.ctx.js, peer)
                    log.warning("peer_source_restarted", peer=peer,
                                last_contact_s=contact.get(peer))
                except Exception as exc:
                    # The source may be gone half-way: discovery's retry loop re-adds it.
                    log.warning("peer_source_restart_failed", peer=peer, error=str(exc))
                    self.sourced.discard(peer)
                    self._spawn(self._source_peer(peer))

    # ---- events -------------------------------------------------------------------

    async def _apply(self, event: Any, sequence: int) -> None:
        handled = sequence <= self.loaded_checkpoint
        actions = self.replicas.apply(event, sequence, handled=handled)
        # After the replica map took it in: a completion's live copy may begin its fetch.
        await self._apply_live(event)
        await self._run_actions(actions)
        if (isinstance(event, RecordingCompleted) and event.node_id == self.me
                and not handled):
            replica = self.replicas.replicas.get(event.recording_id)
            if (replica is not None and replica.object_key == event.object_key
                    and not await asyncio.to_thread(self._holds, event.object_key,
                                                    event.size_bytes)):
                log.warning("own_copy_missing", recording_id=event.recording_id,
                            reason="not in this node's store (rebuilt node?)")
                await self._run_actions(
                    self.replicas.missing_locally(event.recording_id, sequence))

    async def _run_actions(self, actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, Fetch):
                if action.reason == "restored":
                    self.m_restores.inc()
                    log.warning("recording_restore_fetch", recording_id=action.recording_id,
                                reason="purge voided by legal hold")
                self._want(action.recording_id)
            elif isinstance(action, Purge):
                await self._purge(action)
                self.replicas.purge_done(action.sequence)
            elif isinstance(action, Discard):
                await self._discard(action)

    async def _discard(self, action: Discard) -> None:
        """Delete our copy of a completion that lost, only with the winner verified here."""
        replica = self.replicas.replicas.get(action.recording_id)
        if replica is None or replica.object_key != action.winner_key or \
                not await asyncio.to_thread(self._holds, action.winner_key, replica.size):
            log.warning("loser_kept", recording_id=action.recording_id, key=action.object_key,
                        reason="winner not held here")
            return
        try:
            await asyncio.to_thread(self.store.delete, action.object_key)
        except (OSError, ValueError) as exc:
            log.error("loser_delete_failed", recording_id=action.recording_id, error=str(exc))
            return
        self.replicas.discarded(action.recording_id, action.object_key)
        self.m_discards.inc()
        log.info("loser_discarded", recording_id=action.recording_id, key=action.object_key,
                 winner=action.winner_key)

    async def _purge(self, action: Purge) -> None:
        self.attempts.pop(action.recording_id, None)
        self.avoid.pop(action.recording_id, None)
        with contextlib.suppress(ValueError):
            part_path(self.root, action.recording_id).unlink(missing_ok=True)
        try:
            for key in (action.object_key, *action.others):
                await asyncio.to_thread(self.store.delete, key)
            log.info("recording_purged", recording_id=action.recording_id,
                     key=action.object_key)
        except (OSError, ValueError) as exc:
            log.error("purge_failed", recording_id=action.recording_id, error=str(exc))

    def _want(self, recording_id: str) -> None:
        if recording_id in self.queued or recording_id in self.active:
            return
        self.queued.add(recording_id)
        self.queue.put_nowait(recording_id)

    # ---- fetching -----------------------------------------------------------------

    async def _fetch_worker(self) -> None:
        while True:
            recording_id = await self.queue.get()
            self.queued.discard(recording_id)
            if not self.replicas.needs_fetch(recording_id) or recording_id in self.active:
                continue
            if recording_id in self.completed_live:
                # Its live copy is in a pull request: when that ends the copy becomes
                # this fetch's part and the fetch is asked for again
                # (_close_live_copy). Now, the whole object would cross the link beside
                # the copy.
                continue
            self.active.add(recording_id)
            try:
                done = await self._fetch(recording_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fetch_crashed", recording_id=recording_id)
                done = False
            finally:
                self.active.discard(recording_id)
            if done:
                self.attempts.pop(recording_id, None)
                self.avoid.pop(recording_id, None)
            elif self.replicas.needs_fetch(recording_id):
                attempt = self.attempts[recording_id] = self.attempts.get(recording_id, 0) + 1
                asyncio.get_running_loop().call_later(backoff(attempt), self._want,
                                                      recording_id)

    async def _fetch(self, recording_id: str) -> bool:
        """One round over the holders; True when our verified copy is stored."""
        replica = self.replicas.replicas[recording_id]
        key, size = replica.object_key, replica.size
        part = part_path(self.root, recording_id)
        if self._part_keys.get(recording_id, key) != key:
            part.unlink(missing_ok=True)  # a part of a copy that lost: start over
        self._part_keys[recording_id] = key
        started = time.monotonic()
        # Held already, or the live copy is whole (most copies, once the last pages
        # came with the live steps): checked, verified and stored in one trip to a
        # thread, with one read of the file, not three trips and two reads.
        match await asyncio.to_thread(store_whole_part, self.store, key, size, replica.sha256,
                                      part):
            case "held":
                return await self._announce(recording_id)
            case "stored":
                return await self._stored(recording_id, replica, key, size, "live copy",
                                         started)
            case "mismatch":
                log.warning("part_mismatch", recording_id=recording_id,
                            reason="the live copy did not verify: pulled again")
        for holder in self.replicas.sources(recording_id, self.avoid.get(recording_id, ())):
            subject = subjects.rpc(holder, subjects.SYNC, subjects.SYNC_READ)
            # Only a copy pulled wholly from this holder proves it wrong: a part begun
            # as our live copy, or by another holder, is simply pulled again.
            fresh = not part.exists()
            outcome = await pull_object(self._request, subject, key, size, replica.sha256,
                                        part, on_bytes=self.m_bytes.inc,
                                        keep_going=lambda: not replica.purged)
            if replica.purged:
                part.unlink(missing_ok=True)
                return True
            if outcome is Outcome.DONE:
                await asyncio.to_thread(self.store.adopt_file, key, part)
                part.unlink(missing_ok=True)
                return await self._stored(recording_id, replica, key, size, holder, started)
            if outcome is Outcome.MISMATCH and not fresh:
                log.warning("part_mismatch", recording_id=recording_id, source=holder,
                            reason="a part begun elsewhere did not verify: pulled again")
                return False
            self.m_failures.inc()
            if outcome is Outcome.MISMATCH:
                log.error("object_mismatch", recording_id=recording_id, source=holder)
                self.avoid.setdefault(recording_id, set()).add(holder)
            else:
                log.info("holder_unavailable", recording_id=recording_id, source=holder)
        return False

    async def _stored(self, recording_id: str, replica: Replica, key: str, size: int,
                      source: str, started: float) -> bool:
        """After our copy of `key` was stored: drop it if purged meanwhile, else count,
        log and announce it; True when nothing more is to fetch."""
        if replica.purged:  # purged while we were storing it
            await asyncio.to_thread(self.store.delete, key)
            return True
        self.m_replicated.inc()
        log.info("object_replicated", recording_id=recording_id, source=source,
                 size=size, seconds=round(time.monotonic() - started, 3))
        if key != replica.object_key:
            # A better copy of the call was completed meanwhile: fetch that one too.
            self.replicas.held_locally(recording_id, key)
            return False
        return await self._announce(recording_id)

    def _holds(self, key: str, size: int) -> bool:
        return holds(self.store, key, size)

    async def _announce(self, recording_id: str) -> bool:
        replica = self.replicas.replicas[recording_id]
        if replica.purged:
            return True
        event = RecordingReplicated(
            event_id=replicated_event_id(recording_id, self.me),
            node_id=self.me,
            recording_id=recording_id,
            origin_node_id=replica.origin,
            object_key=replica.object_key,
            sha256=replica.sha256,
            size_bytes=replica.size,
        )
        try:
            await bus.publish_event(self.ctx.js, event)
        except Exception as exc:
            log.warning("replicated_publish_failed", recording_id=recording_id, error=str(exc))
            return False  # the object is stored: the retry finds it and only announces
        await self._run_actions(list(self.replicas.held_locally(recording_id, event.object_key)))
        return True

    async def _request(self, subject: str, payload: bytes) -> tuple[bytes, dict[str, str]]:
        msg = await self.ctx.nc.request(subject, payload, timeout=REQUEST_TIMEOUT_S)
        return msg.data, dict(msg.headers or {})

    async def _on_read(self, msg: Msg) -> None:
        if not msg.reply:
            return
        data, headers = await asyncio.to_thread(serve_read, self.store, msg.data,
                                                self.capture_root)
        with contextlib.suppress(Exception):
            await self.ctx.nc.publish(msg.reply, data, headers=headers)

    async def _on_read_live(self, msg: Msg) -> None:
        if not msg.reply:
            return
        data, headers = await asyncio.to_thread(serve_live_ranges, self.capture_root,
                                                msg.data)
        with contextlib.suppress(Exception):
            await self.ctx.nc.publish(msg.reply, data, headers=headers or None)

    # ---- recordings in progress elsewhere: replication and takeover ----------------

    async def _apply_live(self, event: Any) -> None:
        for recording_id in self.live.apply(event, time.monotonic()):
            if isinstance(event, RecordingCompleted):
                self.completed_live.add(recording_id)
            if recording_id not in self.pulling:  # else the pull removes it when it ends
                self._close_live_copy(recording_id)
        if isinstance(event, RecordingStarted) and event.recording_id in self.live.live:
            # After a restart: what our copy already holds (chained complete pages only).
            chain = await asyncio.to_thread(self._live_have, event.recording_id)
            if chain.offset:
                self.live.resumed(event.recording_id, chain)

    def _close_live_copy(self, recording_id: str) -> None:
        """A recording we followed ended. Completed by its origin, our copy holds the
        start of the object we fetch next, so it becomes that fetch's part: only the
        rest crosses the link (a fetch already under way keeps its own part).
        Otherwise the copy goes."""
        completed = recording_id in self.completed_live
        self.completed_live.discard(recording_id)
        if not completed or not self.replicas.needs_fetch(recording_id):
            self._drop_live_copy(recording_id)
            return
        with contextlib.suppress(ValueError, OSError):
            live, part = live_path(self.root, recording_id), part_path(self.root, recording_id)
            if live.exists() and not part.exists():
                part.parent.mkdir(parents=True, exist_ok=True)
                os.replace(live, part)
        self._drop_live_copy(recording_id)
        self._want(recording_id)  # a fetch that waited for the pull (_fetch_worker)

    def _drop_live_copy(self, recording_id: str) -> None:
        with contextlib.suppress(ValueError, OSError):
            live_path(self.root, recording_id).unlink(missing_ok=True)

    def _live_have(self, recording_id: str) -> Chain:
        """Our copy's chained complete pages; anything after them is cut off."""
        try:
            path = live_path(self.root, recording_id)
            if not path.exists():
                return Chain()
            chain = follow_file(path.read_bytes())
            with path.open("r+b") as handle:
                handle.truncate(chain.offset)
            return chain
        except (OSError, ValueError):
            return Chain()

    async def _on_live(self, msg: Msg) -> None:
        """Progress of recordings in progress on another node (`progress_of`)."""
        try:
            updates, foreign = progress_of(msg.subject, msg.data)
        except ValueError as exc:
            self.m_live_dropped.inc()
            log.debug("live_progress_dropped", subject=msg.subject, error=str(exc)[:200])
            return
        if foreign:
            self.m_live_dropped.inc(foreign)
        for update in updates:
            self._take_progress(update)

    def _take_progress(self, update: LiveProgress) -> None:
        """Note an origin's progress; start pulling from it if it has bytes for us."""
        try:
            subjects.check_plain_id(update.recording_id)  # it becomes a file name
        except ValueError as exc:
            self.m_live_dropped.inc()
            log.debug("live_progress_dropped", recording_id=update.recording_id[:200],
                      error=str(exc)[:200])
            return
        if self.live.progress(update, time.monotonic()):
            origin = self.live.live[update.recording_id].origin
            self.pull_due.setdefault(origin, set()).add(update.recording_id)
            if origin not in self.pullers:
                self.pullers.add(origin)
                self._spawn(self._pull_live(origin))

    async def _pull_live(self, origin: str) -> None:
        """Append an origin's new bytes to our copies until level with its last progress.

        One loop per origin, one request at a time: the progress that comes while a
        request is out is asked for together in the next one, so under load a request
        carries many recordings' steps, and at a call or two it is one step each, as
        soon as it is announced."""
        due = self.pull_due.setdefault(origin, set())
        subject = subjects.rpc(origin, subjects.SYNC, subjects.SYNC_READ_LIVE)
        restarted: set[str] = set()
        try:
            while due:
                asked = self.live.next_pulls(due, MAX_LIVE_RANGES, CHUNK_BYTES)
                if not asked:
                    continue
                batch = [recording_id for recording_id, _, _ in asked]
                self.pulling.update(batch)
                try:
                    await self._pull_live_batch(origin, subject, asked, due, restarted)
                finally:
                    for recording_id in batch:
                        self.pulling.discard(recording_id)
                        if recording_id not in self.live.live:
                            due.discard(recording_id)
                            self._close_live_copy(recording_id)
        finally:
            self.pullers.discard(origin)
            if not due:
                self.pull_due.pop(origin, None)

    async def _pull_live_batch(self, origin: str, subject: str,
                               asked: list[tuple[str, int, int]], due: set[str],
                               restarted: set[str]) -> None:
        """One request for `asked`; the bytes that continue our copies are written (in
        one trip to a thread). A recording leaves `due` when its origin had nothing
        for it, did not answer, or its copy cannot be written: its next progress
        brings it back."""
        self.m_live_requests.inc()
        self.m_live_ranges.inc(len(asked))
        ranges = [LiveRange(recording_id=rid, offset=offset, length=length)
                  for rid, offset, length in asked]
        try:
            got = await read_live_ranges(self._request, subject, ranges)
        except TransferError as exc:
            self.m_live_errors.inc()
            log.debug("live_pull_failed", origin=origin, recordings=len(asked),
                      error=str(exc))
            due.difference_update(rid for rid, _, _ in asked)
            return
        writes: list[tuple[str, int, bytes, Chain]] = []
        for (recording_id, offset, length), data in zip(asked, got, strict=True):
            if data is None:
                continue  # the reply was full: asked again next time
            entry = self.live.live.get(recording_id)
            if not data or entry is None:
                due.discard(recording_id)  # nothing more yet, or it ended meanwhile
                continue
            data = data[:length]
            before = entry.chain
            if self.live.pulled(recording_id, data):
                writes.append((recording_id, offset, data, before))
                continue
            # The origin's file is no longer what we copied (it lost its unsynced tail
            # and wrote on, or we read it while it did): start again from 0.
            self.m_live_breaks.inc()
            log.warning("live_copy_discarded", recording_id=recording_id,
                        origin=entry.origin, offset=offset, bytes=len(data))
            writes.append((recording_id, 0, b"", before))
            if recording_id in restarted:
                due.discard(recording_id)  # broken again at once: the next progress
            restarted.add(recording_id)
        if not writes:
            return
        failures = await asyncio.to_thread(
            _append_many, [(live_path(self.root, rid), offset, data)
                           for rid, offset, data, _ in writes])
        for (recording_id, offset, data, before), error in zip(writes, failures, strict=True):
            if error is None:
                self.m_live_bytes.inc(len(data))
                continue
            entry = self.live.live.get(recording_id)
            if entry is not None:
                entry.chain = before  # not written: the next pull asks for it again
            due.discard(recording_id)
            log.warning("live_copy_write_failed", recording_id=recording_id,
                        offset=offset, error=error)

    async def _takeover_loop(self) -> None:
        while True:
            await asyncio.sleep(TAKEOVER_CHECK_INTERVAL)
            heard = {node: at for node, (at, _) in self.peers.entries.items()}
            for entry in self.live.due(time.monotonic(), heard, self.takeover_timeout):
                if entry.recording_id in self.pulling:
                    continue
                try:
                    await self._take_over(entry)
                except Exception:
                    log.exception("takeover_failed", recording_id=entry.recording_id)

    async def _take_over(self, entry: Live) -> None:
        """Finalize what we hold of a recording whose origin fell silent mid-call."""
        assert entry.started is not None
        rid, started = entry.recording_id, entry.started
        source = live_path(self.root, rid)
        work = self.root / "takeover" / f"{rid}.opus"
        built = await asyncio.to_thread(build_takeover, source, work)
        key = takeover_key(rid, started.started_at, self.me, built.duration_ms)
        sha256 = await asyncio.to_thread(self.store.adopt_file, key, work)
        event = RecordingCompleted(
            event_id=takeover_event_id(rid, self.me, built.duration_ms),
            node_id=self.me,
            recording_id=rid,
            started_at=started.started_at,
            ended_at=started.started_at + built.duration,
            duration_ms=built.duration_ms,
            object_key=key,
            size_bytes=built.size,
            sha256=sha256,
            channels=[],
            metadata=started.metadata,
            interrupted=True,
        )
        await bus.publish_event(self.ctx.js, event)
        work.unlink(missing_ok=True)
        self.live.taken_over(rid)
        source.unlink(missing_ok=True)
        self.m_takeovers.inc()
        log.warning("recording_taken_over", recording_id=rid, origin=entry.origin,
                    duration_ms=built.duration_ms, origin_duration_ms=entry.origin_duration_ms,
                    bytes=built.size, key=key, provisional=True)

    # ---- checkpoint ---------------------------------------------------------------

    def _checkpoint_value(self) -> int:
        return max(self.loaded_checkpoint, self.replicas.checkpoint)

    def _save_checkpoint(self, value: int | None = None) -> None:
        value = self._checkpoint_value() if value is None else value
        if value > self.saved_checkpoint:
            save_checkpoint(self.root, value)
            self.saved_checkpoint = value

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            # Read on the loop (the domain is not thread-safe); only the write is off it.
            value = self._checkpoint_value()
            try:
                await asyncio.to_thread(self._save_checkpoint, value)
            except OSError as exc:
                log.error("checkpoint_write_failed", error=str(exc))

    # ---- status -------------------------------------------------------------------

    async def status(self, _: Empty) -> SyncStatus:
        now = time.monotonic()
        timeout = self.ctx.config.role_timeout_s
        nodes: list[NodeStatus] = []
        for node_id, (heard, payload) in sorted(self.peers.entries.items()):
            held = payload.get("recordings_held")
            priority = payload.get("priority")
            nodes.append(NodeStatus(
                node_id=node_id,
                configured_role=str(payload.get("role", "")),
                priority=priority if isinstance(priority, int) else 0,
                alive=now - heard <= timeout,
                last_heartbeat_age_s=round(now - heard, 3),
                recordings=held if isinstance(held, int) else None,
                lag=_heartbeat_lag(payload),
                audit_head=_heartbeat_audit_head(payload),
            ))
        lag = await self._lag()
        for index, node in enumerate(nodes):
            if node.node_id == self.me:
                nodes[index] = node.model_copy(update={"lag": lag})
        return SyncStatus(node_id=self.me, nodes=nodes, lag=lag,
                          recordings_held=self.replicas.recordings_held())

    async def _lag(self) -> list[PeerLag]:
        """This node's lag behind each peer: events its CLUSTER stream still lacks, and
        objects it still has to fetch."""
        sources: dict[str, tuple[int | None, float | None]] = {}
        with contextlib.suppress(Exception):
            sources = await self._source_infos()
        pending = self.replicas.pending_by_origin()
        peers = ({n for n in self.peers.entries} | self.sourced | set(pending)) - {self.me}
        lag = []
        for peer in sorted(peers):
            events_lag, contact = sources.get(subjects.events_stream(peer), (None, None))
            lag.append(PeerLag(node_id=peer, events_lag=events_lag,
                               events_last_contact_s=contact,
                               objects_pending=pending.get(peer, 0)))
        return lag


def _append_many(writes: list[tuple[Path, int, bytes]]) -> list[str | None]:
    """`_append_at` for each write, in order: None for each one done, else its error."""
    errors: list[str | None] = []
    made: set[Path] = set()
    for path, offset, data in writes:
        try:
            if path.parent not in made:
                path.parent.mkdir(parents=True, exist_ok=True)
                made.add(path.parent)
            _append_at(path, offset, data)
        except OSError as exc:
            errors.append(str(exc))
        else:
            errors.append(None)
    return errors


def _append_at(path: Path, offset: int, data: bytes) -> None:
    """Write `data` at `offset` of our live copy and end the copy there (the offset is
    where the followed chain ends: anything after it is not part of the copy)."""
    with path.open("r+b" if path.exists() else "wb") as handle:
        handle.seek(offset)
        handle.write(data)
        handle.truncate(offset + len(data))


def _heartbeat_audit_head(payload: dict[str, Any]) -> AuditHead | None:
    try:
        return AuditHead.model_validate(payload.get("audit_head"))
    except ValueError:
        return None


def _heartbeat_lag(payload: dict[str, Any]) -> list[PeerLag]:
    entries = payload.get("lag")
    if not isinstance(entries, list):
        return []
    lag = []
    for entry in entries:
        try:
            lag.append(PeerLag.model_validate(entry))
        except ValueError:
            continue
    return lag


async def restart_peer_source(js: JetStreamContext, peer: str) -> None:
    """Remove and re-add a peer's source of CLUSTER with the same definition: the server
    then resumes it from the last message it stored from that source (no duplicates,
    nothing lost; checked against nats-server 2.15) instead of waiting out its back-off."""
    info = await js.stream_info(subjects.CLUSTER_STREAM)
    config = info.config
    sources = list(config.sources or [])
    name = subjects.events_stream(peer)
    if not any(source.name == name for source in sources):
        return
    config.sources = [source for source in sources if source.name != name]
    await js.update_stream(config)
    config.sources = sources
    await js.update_stream(config)


async def main(ctx: ServiceContext) -> None:
    await Sync(ctx, open_store(ctx.config.data_dir)).run()

