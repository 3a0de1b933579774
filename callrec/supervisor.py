"""`callrec up`: start nats-server, bootstrap, then keep every service running.

A crashed service is restarted with back-off (capture's first restart at once: its
RTP sockets wait for it in the socket keeper, a thread of this process, see
callrec/sockets.py); SIGTERM/SIGINT stop the services first
(so capture can flush), then nats-server. Children stay in our process group, so an
operator (or a test) can kill the whole node with one signal to the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from contracts import subjects
from contracts.v1.events import UserRemoved, UserUpserted, parse_event

from . import bus, credentials, diskspace, filesystem, natsserver
from .config import NodeConfig
from .logs import get_logger, setup_logging
from .service import SERVICES
from .sockets import SocketKeeper, keeper_path
from .users import User, UsersProjection, hash_password

# Changes with every `callrec up`: lets a restarted service tell "I crashed" (same
# boot: resume) from "the node was down" (new boot: what was in flight is over).
BOOT_ID_ENV = "CALLREC_BOOT_ID"
MAX_BACKOFF = 10.0
HEALTHY_AFTER = 30.0
# At most one JetStream recovery restart this often (a store that fails again at once
# is not restarted in a loop).
JETSTREAM_RESTART_INTERVAL = 10.0
# How long a joining node with an empty stream listens for a peer's heartbeat before
# it starts without its past facts (a brand-new node in a new cluster waits this once).
PEER_WAIT_S = 20.0
# Back-off before the first restart after a crash; later ones double from 0.5 s.
FIRST_BACKOFF = {"capture": 0.0}

log = get_logger()
_background: set[asyncio.Task[None]] = set()


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = 0.5
    crash_times: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.backoff = first_backoff(self.name)


def first_backoff(name: str) -> float:
    """Capture restarts at once: each moment it is down its streams' packets pile up
    in the kept sockets (and would overflow them after several seconds)."""
    return FIRST_BACKOFF.get(name, 0.5)


def next_backoff(backoff: float) -> float:
    return min(max(backoff * 2, 0.5), MAX_BACKOFF)


def run_node(config: NodeConfig) -> int:
    setup_logging("supervisor", config.node_id, config.log_level)
    # Everything the node and its children create is for this OS user alone.
    os.umask(0o077)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    tighten_modes(config.data_dir)
    if filesystem.ext4_without_journal(config.data_dir):
        log.warning("data_dir_without_journal", data_dir=str(config.data_dir.resolve()),
                    hint="ext4 without a journal makes each file created after many "
                         "deletions slow; put the data dir on a journaled ext4 or XFS")
    try:
        cluster = cluster_secrets(config)
    except credentials.CredentialsError as exc:
        log.error("node_start_failed", error=str(exc))
        print(f"callrec: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_supervise(config, cluster))


def tighten_modes(data_dir: Path) -> None:
    """A data dir from an older version (or made by hand) may be world-readable:
    recordings, the catalog and JetStream's files (with password hashes). Close it
    once; afterwards the umask keeps it closed."""
    if data_dir.stat().st_mode & 0o077 == 0:
        return
    for folder, dirs, files in os.walk(data_dir):
        for names, mode in ((dirs, 0o700), (files, 0o600)):
            for name in names:
                path = os.path.join(folder, name)
                if os.path.islink(path):  # never follow a link out of the data dir
                    continue
                with contextlib.suppress(OSError):
                    os.chmod(path, mode)
    data_dir.chmod(0o700)
    log.info("data_dir_modes_tightened", data_dir=str(data_dir))


def cluster_secrets(config: NodeConfig) -> credentials.ClusterSecrets | None:
    """The cluster link's CA and route password: from a join file copied from a
    member, kept from an earlier start, or new when this node founds the cluster."""
    if not config.clustered:
        return None
    if config.join_file is not None:
        joined = credentials.join_cluster(config.data_dir, config.join_file)
        log.info("cluster_join_file_installed", origin=joined.origin)
        return joined
    existing = credentials.load_cluster(config.data_dir)
    if existing is not None:
        return existing
    if config.peers:
        raise credentials.CredentialsError(
            "--peer given but this node has no cluster credentials: on a member run "
            "'callrec cluster invite --out join.json', copy that file here and start "
            "with --join join.json")
    founded = credentials.found_cluster(config.data_dir, config.node_id)
    log.info("cluster_founded", hint="add nodes with 'callrec cluster invite' on this node")
    return founded


async def _supervise(config: NodeConfig, cluster: credentials.ClusterSecrets | None) -> int:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)

    core_proc = natsserver.start_core(config, cluster) if cluster is not None else None
    if core_proc is not None:
        # The JetStream server links up at once when its leaf port is already there;
        # otherwise its first sources back off for a while before reconnecting.
        try:
            await asyncio.to_thread(natsserver.wait_ready, config.leaf_port, core_proc)
        except Exception as exc:
            log.error("node_start_failed", error=str(exc))
            _stop_process(core_proc)
            return 1
    nats_proc, store_watch = natsserver.start(config)
    recovery = JetStreamRecovery(config)
    try:
        await asyncio.to_thread(natsserver.wait_ready, config.nats_port, nats_proc)
        await bootstrap(config, joining=cluster is not None and cluster.origin == "joined")
    except Exception as exc:
        log.error("node_start_failed", error=str(exc))
        _stop_process(nats_proc)
        if core_proc is not None:
            _stop_process(core_proc)
        return 1
    _write_runtime_file(config)
    log.info(
        "node_started",
        sip=f"{config.bind}:{config.sip_port}",
        http=f"http://{config.bind}:{config.http_port}",
        nats=config.nats_url,
        data_dir=str(config.data_dir.resolve()),
    )

    env = {**natsserver.child_environment(), **config.to_env(), BOOT_ID_ENV: uuid.uuid4().hex}
    children = {name: Child(name) for name in SERVICES}
    keeper = _start_socket_keeper(config, children["capture"])
    exited = asyncio.Event()
    for child in children.values():
        await _spawn(child, env, exited)

    while not stopping.is_set():
        await _wait_either(stopping, exited, timeout=0.5)
        exited.clear()
        if stopping.is_set():
            break
        if core_proc is not None and core_proc.poll() is not None:
            log.error("nats_core_exited", code=core_proc.returncode)
            assert cluster is not None
            core_proc = natsserver.start_core(config, cluster)
        if nats_proc.poll() is None and recovery.should_restart(store_watch):
            # The file store failed to write (a full disk) and there is room again:
            # nats-server keeps such a stream (or all of JetStream) stopped until it
            # restarts, so restart it; the services reconnect and retry their writes.
            await asyncio.to_thread(_stop_process, nats_proc)
        if nats_proc.poll() is not None:
            log.error("nats_server_exited", code=nats_proc.returncode)
            nats_proc, store_watch = natsserver.start(config)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(natsserver.wait_ready, config.nats_port, nats_proc)
        for child in children.values():
            proc = child.process
            if proc is None or proc.returncode is None:
                if proc is not None and time.monotonic() - child.started > HEALTHY_AFTER:
                    child.backoff = first_backoff(child.name)
                continue
            log.error("service_exited", service=child.name, code=proc.returncode,
                      restart_in=child.backoff)
            child.process = None
            await asyncio.sleep(child.backoff)
            child.backoff = next_backoff(child.backoff)
            child.restarts += 1
            await _spawn(child, env, exited)

    log.info("node_stopping")
    procs = [c.process for c in children.values() if c.process and c.process.returncode is None]
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    try:
        await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), timeout=15)
    except TimeoutError:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    if keeper is not None:
        keeper.close()
    _stop_process(nats_proc)
    if core_proc is not None:
        _stop_process(core_proc)
    with contextlib.suppress(FileNotFoundError):
        (config.data_dir / "run" / "node.json").unlink()
    log.info("node_stopped")
    return 0


class JetStreamRecovery:
    """When to restart a JetStream server whose file store failed to write: once the
    data disk has room again (callrec.diskspace.jetstream_can_resume), and at most
    every JETSTREAM_RESTART_INTERVAL seconds. No person needed."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.last_restart = 0.0
        self.waiting_logged = False
        self.restarts = 0

    def should_restart(self, watch: natsserver.StoreWatch) -> bool:
        if not watch.failed.is_set():
            return False
        try:
            usage = shutil.disk_usage(self.config.data_dir)
        except OSError:
            return False
        room = diskspace.jetstream_can_resume(usage.free, usage.total, self.config.reserve)
        if not room or time.monotonic() - self.last_restart < JETSTREAM_RESTART_INTERVAL:
            if not self.waiting_logged:
                log.error("jetstream_store_failed", line=watch.last_failure,
                          free_mib=usage.free // diskspace.MIB,
                          action="restarting nats-server once there is room")
                self.waiting_logged = True
            return False
        self.last_restart = time.monotonic()
        self.waiting_logged = False
        self.restarts += 1
        log.warning("jetstream_restart", reason=watch.last_failure,
                    free_mib=usage.free // diskspace.MIB, restarts=self.restarts)
        return True


async def _spawn(child: Child, env: dict[str, str], exited: asyncio.Event) -> None:
    child.process = process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"services.{child.name}", env=env, stdin=subprocess.DEVNULL
    )
    child.started = time.monotonic()
    log.info("service_spawned", service=child.name, pid=process.pid)
    # Wake the supervision loop the moment it exits rather than at its next poll.
    waiter = asyncio.get_running_loop().create_task(_note_exit(process, exited))
    _background.add(waiter)
    waiter.add_done_callback(_background.discard)


async def _note_exit(process: asyncio.subprocess.Process, exited: asyncio.Event) -> None:
    await process.wait()
    exited.set()


async def _wait_either(first: asyncio.Event, second: asyncio.Event, timeout: float) -> None:
    waits = {asyncio.ensure_future(first.wait()), asyncio.ensure_future(second.wait())}
    _, pending = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task


# ---- the socket keeper: capture's RTP sockets outlive the capture process ----------

def _start_socket_keeper(config: NodeConfig, capture: Child) -> SocketKeeper | None:
    """Only the capture process we spawned may hand over or take back sockets. Without
    a keeper the node still records; a capture restart then loses what arrives
    while it is down."""

    def capture_pid() -> int:
        process = capture.process
        return process.pid if process is not None and process.returncode is None else 0

    try:
        return SocketKeeper(keeper_path(config.data_dir), allowed_pid=capture_pid).start()
    except OSError as exc:
        log.error("socket_keeper_failed", error=str(exc))
        return None


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _write_runtime_file(config: NodeConfig) -> None:
    """Tells the CLI on this host how to reach the running node."""
    path = config.data_dir / "run" / "node.json"
    path.write_text(
        json.dumps(
            {
                "node_id": config.node_id,
                "nats_url": config.nats_url,
                "http_port": config.http_port,
                "pid": os.getpid(),
            }
        )
    )


async def load_users(js: JetStreamContext, node_id: str) -> UsersProjection:
    """Read every user event once (used by bootstrap and the CLI)."""
    projection = UsersProjection()
    stream = subjects.CLUSTER_STREAM
    filter_subject = subjects.events_of_type("user.*")
    info = await js.stream_info(stream, subjects_filter=filter_subject)
    total = sum((info.state.subjects or {}).values())
    if total == 0:
        return projection
    seen = 0
    sub = await js.subscribe(filter_subject, stream=stream, ordered_consumer=True)
    try:
        while seen < total:
            msg = await sub.next_msg(timeout=5)
            seen += 1
            event = parse_event(msg.data)
            if isinstance(event, UserUpserted | UserRemoved):
                projection.apply(event, msg.metadata.sequence.stream)
    finally:
        await sub.unsubscribe()
    return projection


async def bootstrap(config: NodeConfig, joining: bool = False) -> None:
    """Create the node's streams and make sure someone can log in.

    A node that joined a cluster adopts the cluster's users: it creates none of its
    own (two first-start admins would replicate in opposite orders and each node's
    password would work only on the other). It waits for them instead, and says so.
    The admin password from the environment only creates the first admin: a
    password changed later through the API is never reset by a restart."""
    nc = await _connect_as_node(config, "bootstrap")
    try:
        js = nc.jetstream()
        await bus.ensure_streams(js, config.node_id)
        await bus.ensure_missed_stream(
            js, config.node_id, config.missed_retention_days,
            diskspace.missed_calls_budget(natsserver.jetstream_budget(config.data_dir)))
        if joining:
            await restore_own_history(nc, js, config.node_id)
        users = await load_users(js, config.node_id)
        if users.has_admin():
            return
        if joining:
            if config.admin_password:
                log.warning("admin_password_ignored",
                            reason="a joining node adopts the cluster's users")
            task = asyncio.get_running_loop().create_task(_await_cluster_users(config))
            _background.add(task)
            task.add_done_callback(_background.discard)
            return
        password = config.admin_password
        generated = password is None
        if password is None:
            password = secrets.token_urlsafe(12)
        await bus.publish_event(js, _admin_event(config, password, users.users.get("admin")))
        if generated:
            secret_file = config.data_dir / "run" / "initial-admin-password"
            credentials.write_private(secret_file, password.encode() + b"\n")
            print(
                f"\n  First start: web/API user 'admin', password '{password}'"
                f" (also in {secret_file}).\n",
                file=sys.stderr,
                flush=True,
            )
    finally:
        await nc.drain()


async def restore_own_history(
    nc: NatsClient, js: JetStreamContext, node_id: str, wait_s: float = PEER_WAIT_S
) -> int:
    """A node rebuilt empty (its host lost) takes its own past facts back from a peer
    before it states anything new.

    Its facts live on in every peer's CLUSTER stream. Copied back in their order,
    with their ids, they get their old sequence numbers in this node's stream, so the
    peers' sources (which remember the last sequence they took) go on with the new
    facts. Only a node whose own stream is empty does this; a peer is found by its
    heartbeats. Returns how many facts were restored."""
    own = subjects.events_stream(node_id)
    info = await js.stream_info(own)
    if info.state.messages:
        return 0
    peers = await _peers_heard(nc, node_id, wait_s)
    filter_subject = subjects.node_events(node_id)
    for peer in peers:
        try:
            remote = nc.jetstream(domain=peer)
            found = await remote.stream_info(subjects.CLUSTER_STREAM,
                                             subjects_filter=filter_subject)
            total = sum((found.state.subjects or {}).values())
            if total == 0:
                continue
            log.info("restoring_own_history", peer=peer, facts=total)
            sub = await remote.subscribe(filter_subject, stream=subjects.CLUSTER_STREAM,
                                         ordered_consumer=True)
            restored = 0
            try:
                while restored < total:
                    msg = await sub.next_msg(timeout=10)
                    msg_id = (msg.headers or {}).get("Nats-Msg-Id")
                    await js.publish(msg.subject, msg.data, timeout=5,
                                     headers={"Nats-Msg-Id": msg_id} if msg_id else None)
                    restored += 1
            finally:
                await sub.unsubscribe()
            log.info("own_history_restored", peer=peer, facts=restored)
            return restored
        except Exception as exc:
            log.warning("own_history_restore_failed", peer=peer, error=str(exc))
    return 0


async def _peers_heard(nc: NatsClient, node_id: str, wait_s: float) -> list[str]:
    """Node ids whose heartbeats reach us within `wait_s` (none: a new cluster)."""
    heard: list[str] = []

    async def on_beat(msg: Msg) -> None:
        peer = msg.subject.split(".")[2]
        if peer != node_id and peer not in heard:
            heard.append(peer)

    sub = await nc.subscribe(subjects.all_heartbeats(), cb=on_beat)
    deadline = time.monotonic() + wait_s
    try:
        while not heard and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)  # let the other peers' beats in too
    finally:
        await sub.unsubscribe()
    if not heard:
        log.warning("no_peer_heard", waited_s=wait_s,
                    hint="starting without a peer's copy of this node's past facts")
    return heard


async def _connect_as_node(config: NodeConfig, purpose: str) -> NatsClient:
    password = credentials.bus_password(config.data_dir, "node", create=True)
    return await bus.connect(config.nats_url, f"{config.node_id}-{purpose}", "node", password)


async def _await_cluster_users(config: NodeConfig) -> None:
    """Say, until they arrive, that this node waits for the cluster's users."""
    started = time.monotonic()
    while True:
        try:
            nc = await _connect_as_node(config, "join-wait")
            try:
                users = await load_users(nc.jetstream(), config.node_id)
            finally:
                await nc.drain()
            if users.has_admin():
                log.info("cluster_users_adopted", users=len(users.users),
                         waited_s=round(time.monotonic() - started, 1))
                return
        except Exception as exc:
            log.debug("cluster_users_check_failed", error=str(exc))
        log.warning("waiting_for_cluster_users",
                    hint="no users yet: they come from the cluster once the link is up;"
                         " this node creates none of its own",
                    waited_s=round(time.monotonic() - started, 1))
        await asyncio.sleep(5.0)


def _admin_event(config: NodeConfig, password: str, existing: User | None) -> UserUpserted:
    return UserUpserted(
        node_id=config.node_id,
        username="admin",
        display_name="Administrator",
        password_hash=hash_password(password),
        admin=True,
        extensions=existing.extensions if existing else [],
        record=existing.record if existing else False,
    )
