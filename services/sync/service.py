"""Sync service: presence, peer discovery and recording replication between nodes.

Heartbeats (core NATS, once a second) tell peers and the scheduler that this node is
alive; a heartbeat from an unknown node makes our CLUSTER stream source its events,
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
import time
import uuid
from typing import Any

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from callrec import bus
from callrec.service import ServiceContext
from callrec.store import ObjectStore, open_store
from contracts import subjects
from contracts.v1.events import RecordingReplicated
from contracts.v1.rpc import Empty, NodeStatus, PeerLag, SyncStatus

from .domain import Fetch, PeerTable, Purge, ReplicaMap, backoff, stalled_sources
from .state import load_checkpoint, part_path, save_checkpoint
from .transfer import REQUEST_TIMEOUT_S, Outcome, pull_object, serve_read

HEARTBEAT_INTERVAL = 1.0
SOURCE_CHECK_INTERVAL = 3.0
CHECKPOINT_INTERVAL = 1.0
PARALLEL_FETCHES = 3
EVENT_NAMESPACE = uuid.UUID("0b8f5f0e-4a4e-4f7e-9d55-3c2f1d6b7a21")

log = structlog.get_logger()


def replicated_event_id(recording_id: str, node_id: str) -> str:
    """Deterministic, so announcing the same copy again is a duplicate, not a new fact."""
    return uuid.uuid5(EVENT_NAMESPACE, f"recording.replicated:{recording_id}:{node_id}").hex


def heartbeat_payload(ctx: ServiceContext, sequence: int, held: int = 0,
                      pending: dict[str, int] | None = None,
                      lag: list[PeerLag] | None = None) -> bytes:
    config = ctx.config
    return json.dumps({
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
        m = ctx.metrics
        self.m_replicated = m.counter("sync_objects_replicated_total",
                                      "objects fetched from peers and stored")
        self.m_bytes = m.counter("sync_bytes_replicated_total", "bytes fetched from peers")
        self.m_failures = m.counter("sync_fetch_failures_total",
                                    "fetch attempts that failed (no answer, bad content)")
        self.m_restores = m.counter("sync_restores_total",
                                    "copies fetched back because a legal hold voided a purge")
        self.m_heartbeats = m.counter("sync_heartbeats_sent_total", "heartbeats published")
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
        await bus.serve(nc, subjects.rpc(me, subjects.SYNC, subjects.SYNC_STATUS),
                        Empty, self.status)
        log.info("sync_replay", checkpoint=self.loaded_checkpoint)
        self._spawn(bus.follow_events(self.ctx.js, me,
                                      subjects.events_of_type("recording.>"), 1, self._apply))
        for _ in range(PARALLEL_FETCHES):
            self._spawn(self._fetch_worker())
        self._spawn(self._checkpoint_loop())
        self._spawn(self._source_watchdog())
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
                                            self.replicas.pending_by_origin(), lag)
                with contextlib.suppress(Exception):
                    await self.ctx.nc.publish(subjects.heartbeat(self.me), payload)
                    self.m_heartbeats.inc()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=HEARTBEAT_INTERVAL)

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
        for action in self.replicas.apply(event, sequence, handled=handled):
            if isinstance(action, Fetch):
                if action.reason == "restored":
                    self.m_restores.inc()
                    log.warning("recording_restore_fetch", recording_id=action.recording_id,
                                reason="purge voided by legal hold")
                self._want(action.recording_id)
            elif isinstance(action, Purge):
                await self._purge(action)
                self.replicas.purge_done(action.sequence)

    async def _purge(self, action: Purge) -> None:
        self.attempts.pop(action.recording_id, None)
        self.avoid.pop(action.recording_id, None)
        with contextlib.suppress(ValueError):
            part_path(self.root, action.recording_id).unlink(missing_ok=True)
        try:
            await asyncio.to_thread(self.store.delete, action.object_key)
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
        if await asyncio.to_thread(self._holds, key, size):
            return await self._announce(recording_id)
        part = part_path(self.root, recording_id)
        started = time.monotonic()
        for holder in self.replicas.sources(recording_id, self.avoid.get(recording_id, ())):
            subject = subjects.rpc(holder, subjects.SYNC, subjects.SYNC_READ)
            outcome = await pull_object(self._request, subject, key, size, replica.sha256,
                                        part, on_bytes=self.m_bytes.inc,
                                        keep_going=lambda: not replica.purged)
            if replica.purged:
                part.unlink(missing_ok=True)
                return True
            if outcome is Outcome.DONE:
                await asyncio.to_thread(self.store.put_file, key, part)
                part.unlink(missing_ok=True)
                if replica.purged:  # purged while we were storing it
                    await asyncio.to_thread(self.store.delete, key)
                    return True
                self.m_replicated.inc()
                log.info("object_replicated", recording_id=recording_id, source=holder,
                         size=size, seconds=round(time.monotonic() - started, 3))
                return await self._announce(recording_id)
            self.m_failures.inc()
            if outcome is Outcome.MISMATCH:
                log.error("object_mismatch", recording_id=recording_id, source=holder)
                self.avoid.setdefault(recording_id, set()).add(holder)
            else:
                log.info("holder_unavailable", recording_id=recording_id, source=holder)
        return False

    def _holds(self, key: str, size: int) -> bool:
        try:
            return self.store.exists(key) and self.store.size(key) == size
        except (OSError, ValueError):
            return False

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
        self.replicas.held_locally(recording_id)
        return True

    async def _request(self, subject: str, payload: bytes) -> tuple[bytes, dict[str, str]]:
        msg = await self.ctx.nc.request(subject, payload, timeout=REQUEST_TIMEOUT_S)
        return msg.data, dict(msg.headers or {})

    async def _on_read(self, msg: Msg) -> None:
        if not msg.reply:
            return
        data, headers = await asyncio.to_thread(serve_read, self.store, msg.data)
        with contextlib.suppress(Exception):
            await self.ctx.nc.publish(msg.reply, data, headers=headers)

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

