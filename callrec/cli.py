"""The `callrec` command: run a node, manage users, list and run maintenance jobs.

Every flag has a `CALLREC_*` environment variable, so the same settings work from a
shell, a systemd unit or docker-compose.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from nats.aio.client import Client as NatsClient
from pydantic import ValidationError

from contracts import subjects
from contracts.v1.events import Role
from contracts.v1.rpc import Empty, JobRunView, JobsStatus, JobView

from . import bus, credentials, jobcommands
from .config import NodeConfig
from .jobcommands import JobRuleError
from .jobspec import definition_of, schedule_text, summary
from .logs import setup_logging
from .supervisor import load_users, run_node
from .usercommands import (
    ROLES,
    SaveUser,
    UserRuleError,
    check_password,
    remove_user,
    save_user,
)
from .users import User, UsersProjection, hash_password


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"CALLREC_{name}", default)


def _env_bool(name: str) -> bool:
    return (_env(name) or "").lower() in ("1", "true", "yes", "on")


def _parse_range(text: str) -> tuple[int, int]:
    try:
        low, high = (int(part) for part in text.split("-", 1))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected a range like 20000-29999, got {text!r}"
        ) from exc
    return low, high


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callrec", description="Highly available call recorder")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start a whole node (nats-server and all services)")
    up.add_argument("--node-id", default=_env("NODE_ID"))
    up.add_argument("--data-dir", default=_env("DATA_DIR", "./data"))
    up.add_argument("--bind", default=_env("BIND", "127.0.0.1"))
    up.add_argument("--advertise-address", default=_env("ADVERTISE_ADDRESS"))
    up.add_argument("--sip-port", type=int, default=int(_env("SIP_PORT", "5060") or 5060))
    up.add_argument("--http-port", type=int, default=int(_env("HTTP_PORT", "8080") or 8080))
    up.add_argument("--nats-port", type=int, default=int(_env("NATS_PORT", "4222") or 4222))
    up.add_argument("--rtp-ports", type=_parse_range,
                    default=_parse_range(_env("RTP_PORTS", "20000-29999") or ""))
    up.add_argument("--max-channels", type=int,
                    default=int(_env("MAX_CHANNELS", "100") or 100),
                    help="licensed concurrent recorded calls")
    up.add_argument("--record-all", action="store_true", default=_env_bool("RECORD_ALL"),
                    help="record every extension, known or not")
    up.add_argument("--role", choices=["primary", "backup"], default=_env("ROLE", "primary"))
    up.add_argument("--priority", type=int, default=int(_env("PRIORITY", "0") or 0))
    up.add_argument("--peer", action="append", dest="peers",
                    default=[p for p in (_env("PEERS") or "").split(",") if p],
                    help="a peer's cluster address host:port (repeatable)")
    up.add_argument("--cluster-port", type=int,
                    default=int(_env("CLUSTER_PORT") or 0) or None,
                    help="port peers connect to (enables clustering)")
    up.add_argument("--nats-leaf-port", type=int,
                    default=int(_env("NATS_LEAF_PORT") or 0) or None,
                    help="loopback port between this node's two nats-servers (default nats+1)")
    up.add_argument("--role-timeout", type=float,
                    default=float(_env("ROLE_TIMEOUT") or 3.0),
                    help="seconds without heartbeats before a backup takes the role")
    up.add_argument("--join", default=_env("JOIN"), metavar="FILE",
                    help="join the cluster of the member that wrote FILE "
                         "('callrec cluster invite' there)")
    up.add_argument("--log-level", default=_env("LOG_LEVEL", "info"))
    up.add_argument("--opus-bitrate", type=int,
                    default=int(_env("OPUS_BITRATE")
                                or NodeConfig.model_fields["opus_bitrate"].default),
                    help="Opus bit/s of both channels of a narrowband call together")
    up.add_argument("--opus-mode", choices=("celt", "auto"),
                    default=_env("OPUS_MODE") or NodeConfig.model_fields["opus_mode"].default,
                    help="how narrowband calls are coded: celt (cheaper; the default) or "
                         "auto (libopus' choice, SILK: better at 16000 bit/s and up)")
    # ---- SIP admission ----
    up.add_argument("--sip-allow", action="append", dest="sip_allow", metavar="CIDR",
                    default=[a.strip() for a in (_env("SIP_ALLOW") or "").split(",")
                             if a.strip()],
                    help="PBX/SBC network allowed to send SIP (repeatable); default "
                         "127.0.0.1 and ::1 on a loopback bind, else nobody")
    up.add_argument("--sip-rate", type=float, default=float(_env("SIP_RATE") or 1000.0),
                    help="SIP requests/s per allow-listed source (503 to new INVITEs beyond)")
    up.add_argument("--sip-shed-after", type=float,
                    default=float(_env("SIP_SHED_AFTER") or 1.0),
                    help="seconds a new INVITE may wait in the node's queue (overload) "
                         "before it is answered 503 so the PBX fails over; 0: never")
    up.add_argument("--max-live-lag", type=float,
                    default=float(_env("MAX_LIVE_LAG") or 5.0),
                    help="seconds the live encoding of calls in progress may fall behind "
                         "(over capacity) before new calls are answered 503; 0: never")
    up.add_argument("--sip-pending-media", type=int,
                    default=int(_env("SIP_PENDING_MEDIA") or 0) or None,
                    help="answered legs per source still without RTP (503 beyond); "
                         "default half of --max-channels")
    up.add_argument("--sip-tcp-per-source", type=int,
                    default=int(_env("SIP_TCP_PER_SOURCE") or 64),
                    help="concurrent SIP TCP connections per source address")
    up.add_argument("--sip-tcp-max", type=int, default=int(_env("SIP_TCP_MAX") or 1024),
                    help="concurrent SIP TCP connections in all")
    up.add_argument("--media-timeout", type=float,
                    default=float(_env("MEDIA_TIMEOUT") or 30.0),
                    help="seconds without RTP (not on hold) that end a leg; 0: off")
    # ---- end SIP admission ----
    # ---- missed calls ----
    up.add_argument("--missed-retention", type=float,
                    default=float(_env("MISSED_RETENTION") or 30.0), metavar="DAYS",
                    help="days refused INVITEs are kept for the missed-calls page "
                         "(at most 64 MiB in any case, oldest dropped first)")
    up.add_argument("--missed-window", type=float,
                    default=float(_env("MISSED_WINDOW") or 60.0), metavar="SECONDS",
                    help="period over which refusals beyond the first few per source "
                         "and reason are kept as one record with a count")
    # ---- end missed calls ----
    up.add_argument("--disk-reserve", default=_env("DISK_RESERVE", "auto"),
                    help="free space kept for calls in progress: below it new calls get "
                         "503; auto = max(1 GiB, 5%% of the data disk), at most 25%%; "
                         "or a size (2G, 500M) or a share (10%%); 0: off")
    up.add_argument("--number-plan", action="append", dest="number_plan", metavar="RULE",
                    default=[r.strip() for r in (_env("NUMBER_PLAN") or "").split(",")
                             if r.strip()],
                    help="map recorded numbers to extensions (repeatable, first match "
                         "wins): PATTERN[/N], X = any digit, keep the last N digits, "
                         "e.g. +4930123452XXX/4")

    users = sub.add_parser("users", help="manage users (the node must be running)")
    users.add_argument("--data-dir", default=_env("DATA_DIR", "./data"))
    users.add_argument("--nats-url", default=_env("NATS_URL"))
    users_sub = users.add_subparsers(dest="users_command", required=True)
    add = users_sub.add_parser("add", help="add or update a user")
    add.add_argument("username", nargs="?", default=None)
    add.add_argument("--extension", action="append", default=[],
                     help="recorded extension / directory number (repeatable)")
    add.add_argument("--admin", action="store_true", help="may administer the node "
                     "(same as --role admin)")
    add.add_argument("--role", choices=list(ROLES), default=None,
                     help="user: own recordings; supervisor: also of the groups supervised; "
                          "admin: everything (default: unchanged, user for a new user)")
    add.add_argument("--supervise", action="append", default=[], dest="supervises",
                     metavar="GROUP", help="group a supervisor supervises (repeatable)")
    enabled = add.add_mutually_exclusive_group()
    enabled.add_argument("--disable", action="store_true",
                         help="may not log in (sessions and tokens stop working)")
    enabled.add_argument("--enable", action="store_true", help="may log in again")
    add.add_argument("--password", default=None, help="web/API password")
    add.add_argument("--password-stdin", action="store_true")
    add.add_argument("--no-record", action="store_true",
                     help="known user, but calls are not recorded (SIP 403)")
    add.add_argument("--name", default=None, help="display name")
    add.add_argument("--group", action="append", default=[], dest="groups",
                     help="group (repeatable; e.g. for group retention)")
    rm = users_sub.add_parser("remove", help="remove a user")
    rm.add_argument("username")
    users_sub.add_parser("list", help="list users")

    cluster = sub.add_parser("cluster", help="cluster membership")
    cluster.add_argument("--data-dir", default=_env("DATA_DIR", "./data"))
    cluster_sub = cluster.add_subparsers(dest="cluster_command", required=True)
    invite = cluster_sub.add_parser(
        "invite", help="write the one file a new node needs to join this node's cluster")
    invite.add_argument("--out", default="callrec-join.json",
                        help="where to write it (mode 0600; copy it to the new node, "
                             "then delete it)")

    jobs = sub.add_parser("jobs", help="maintenance jobs (the node must be running)")
    jobs.add_argument("--data-dir", default=_env("DATA_DIR", "./data"))
    jobs.add_argument("--nats-url", default=_env("NATS_URL"))
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    jobs_list = jobs_sub.add_parser("list", help="one line per job")
    jobs_list.add_argument("--json", action="store_true", help="the scheduler's JSON instead")
    run = jobs_sub.add_parser("run", help="run a job now (on the node holding the role)")
    run.add_argument("job", help="job id or name")
    run.add_argument("--dry-run", action="store_true", help="report, change nothing")
    run.add_argument("--wait", action="store_true", help="wait for the run to end")
    run.add_argument("--timeout", type=float, default=3600.0,
                     help="seconds --wait waits at most (default 3600)")
    add_job = jobs_sub.add_parser(
        "add", help="create a job, or replace one's definition (--job): the API's JSON body")
    add_job.add_argument("definition", help='JSON, e.g. \'{"name": "nightly purge", '
                         '"kind": "purge", "schedule": {"cron": "0 2 * * *"}, '
                         '"purge": {"retention": "365d"}}\', or @file.json '
                         '(durations: 365 or 365d, 2w, 12h, 90min, 30s; a bare number of '
                         'retention is days)')
    add_job.add_argument("--job", default=None, help="id or name of the job to replace")
    show = jobs_sub.add_parser(
        "show", help="a job's definition as 'jobs add' takes it (retention in days)")
    show.add_argument("job", help="job id or name")
    remove = jobs_sub.add_parser("remove", help="delete a job (its history stays)")
    remove.add_argument("job", help="job id or name")
    for verb in ("pause", "resume"):
        toggle = jobs_sub.add_parser(verb, help=f"{verb} a job's schedule")
        toggle.add_argument("job", help="job id or name")
    history = jobs_sub.add_parser("history", help="the last runs, newest first")
    history.add_argument("job", nargs="?", default=None, help="job id or name (default: all)")
    history.add_argument("--json", action="store_true")
    return parser


def config_from_args(args: argparse.Namespace) -> NodeConfig:
    values: dict[str, object] = {
        "data_dir": Path(args.data_dir),
        "bind": args.bind,
        "advertise_address": args.advertise_address,
        "sip_port": args.sip_port,
        "http_port": args.http_port,
        "nats_port": args.nats_port,
        "rtp_port_min": args.rtp_ports[0],
        "rtp_port_max": args.rtp_ports[1],
        "max_channels": args.max_channels,
        "record_all": args.record_all,
        "role": args.role,
        "priority": args.priority,
        "peers": tuple(args.peers),
        "cluster_port": args.cluster_port,
        "nats_leaf_port": args.nats_leaf_port,
        "role_timeout_s": args.role_timeout,
        "admin_password": _env("ADMIN_PASSWORD"),
        "join_file": Path(args.join) if args.join else None,
        "log_level": args.log_level,
        "opus_bitrate": args.opus_bitrate,
        "opus_mode": args.opus_mode,
        # SIP admission
        "sip_allow": tuple(args.sip_allow),
        "sip_rate": args.sip_rate,
        "sip_shed_after_s": args.sip_shed_after,
        "sip_pending_media": args.sip_pending_media,
        "max_live_lag_s": args.max_live_lag,
        "sip_tcp_per_source": args.sip_tcp_per_source,
        "sip_tcp_max": args.sip_tcp_max,
        "media_timeout_s": args.media_timeout,
        "disk_reserve": args.disk_reserve,
        "missed_retention_days": args.missed_retention,
        "missed_window_s": args.missed_window,
        "number_plan": tuple(args.number_plan),
    }
    if args.node_id:
        values["node_id"] = args.node_id
    return NodeConfig.model_validate(values)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "up":
        try:
            config = config_from_args(args)
        except ValidationError as exc:
            print(f"callrec: invalid configuration:\n{exc}", file=sys.stderr)
            return 2
        return run_node(config)
    if args.command == "users":
        try:
            return asyncio.run(_users(args))
        except UsageError as exc:
            print(f"callrec: {exc}", file=sys.stderr)
            return 2
    if args.command == "cluster":
        return _cluster(args)
    if args.command == "jobs":
        try:
            return asyncio.run(_jobs(args))
        except UsageError as exc:
            print(f"callrec: {exc}", file=sys.stderr)
            return 2
        except bus.RpcError as exc:
            print(f"callrec: the scheduler did not answer ({exc})", file=sys.stderr)
            return 1
    return 2


class UsageError(Exception):
    pass


def _cluster(args: argparse.Namespace) -> int:
    found = credentials.load_cluster(Path(args.data_dir))
    if found is None:
        print(f"callrec: {args.data_dir} holds no cluster credentials: start this node "
              "with --cluster-port first", file=sys.stderr)
        return 2
    out = Path(args.out)
    credentials.write_private(out, found.join_file())
    print(f"wrote {out} (secret: it admits a node to the cluster). On the new node:\n"
          f"  callrec up --cluster-port PORT --peer THIS_HOST:PORT --join {out.name} ...\n"
          "then delete the file.")
    return 0


def save_command(args: argparse.Namespace, existing: User | None,
                 password_hash: str | None) -> SaveUser:
    """What `users add` asks for: the given flags over the user's current state.
    `--extension`, `--group` and `--supervise` add to the current lists (it is `add`);
    the rules (owners of extensions, the last admin, ...) are `usercommands`', as on the web."""
    current = SaveUser.of(existing) if existing else SaveUser(username=args.username)
    role: Role = args.role or ("admin" if args.admin else current.role)
    return replace(
        current,
        role=role,
        display_name=args.name or current.display_name,
        extensions=(*current.extensions, *args.extension),
        record=not args.no_record,
        groups=(*current.groups, *args.groups),
        supervises=(*current.supervises, *args.supervises),
        disabled=True if args.disable else False if args.enable else current.disabled,
        password_hash=password_hash,
    )


async def _users(args: argparse.Namespace) -> int:
    url, node_id = _node_address(args)
    setup_logging("cli", node_id, "error")  # stdout is for the listing
    nc = await _connect(args, url, node_id)
    try:
        js = nc.jetstream()
        users = await load_users(js, node_id)
        if args.users_command == "list":
            for user in sorted(users.users.values(), key=lambda u: u.username):
                print(json.dumps({
                    "username": user.username, "role": user.role, "admin": user.admin,
                    "extensions": user.extensions, "record": user.record,
                    "groups": user.groups, "supervises": user.supervises,
                    "disabled": user.disabled,
                    "has_password": bool(user.password_hash),
                }))
            return 0
        try:
            if args.users_command == "remove":
                await bus.publish_event(js, remove_user(users, args.username, node_id))
                return 0
            if not args.username:
                if args.admin or args.role == "admin":
                    args.username = "admin"
                elif len(args.extension) == 1:
                    args.username = args.extension[0]
                else:
                    raise UsageError("give a username (or exactly one --extension to use "
                                     "as name)")
            password = args.password
            if args.password_stdin:
                password = sys.stdin.readline().rstrip("\n")
            elif (args.admin or args.role == "admin") and password is None \
                    and sys.stdin.isatty() and not _has_password(users, args.username):
                password = getpass.getpass(f"password for {args.username}: ")
            command = save_command(args, users.users.get(args.username),
                                   hash_password(check_password(password)) if password
                                   else None)
            event = save_user(users, command, node_id)
        except UserRuleError as exc:
            raise UsageError(str(exc)) from None
        await bus.publish_event(js, event)
        print(f"user {args.username} saved")
        return 0
    finally:
        await nc.drain()


def _has_password(users: UsersProjection, username: str) -> bool:
    user = users.users.get(username)
    return user is not None and bool(user.password_hash)


async def _connect(args: argparse.Namespace, url: str, node_id: str) -> NatsClient:
    """Log in to the node's bus as `node`, with the password only its OS user can read."""
    try:
        password = credentials.bus_password(Path(args.data_dir), "node")
    except PermissionError as exc:
        raise UsageError(f"cannot read the node's credentials ({exc}): run as the user "
                         "that runs the node") from exc
    if password is None:
        raise UsageError(f"no bus credentials in {args.data_dir}/secrets: is this the "
                         "node's data dir?")
    return await bus.connect(url, f"{node_id}-cli", "node", password)


def _node_address(args: argparse.Namespace) -> tuple[str, str]:
    runtime = Path(args.data_dir) / "run" / "node.json"
    if runtime.exists():
        info = json.loads(runtime.read_text())
        return args.nats_url or str(info["nats_url"]), str(info["node_id"])
    raise UsageError(
        f"no running node found ({runtime} is missing): start it with 'callrec up'"
        " or pass --data-dir"
    )


# --------------------------------------------------------------------------- jobs

NO_START_WARNING_S = 30.0


async def _jobs_status(nc: NatsClient, node_id: str) -> JobsStatus:
    subject = subjects.rpc(node_id, subjects.SCHEDULER, subjects.SCHEDULER_JOBS)
    status = await bus.call(nc, subject, Empty(), JobsStatus, timeout=3.0)
    if status is None:
        raise bus.RpcError("empty reply")
    return status


def _find_job(status: JobsStatus, ref: str) -> JobView:
    """A job by id, or by name (`jobcommands.find`, as the web)."""
    try:
        return jobcommands.find(status, ref)
    except JobRuleError as exc:
        raise UsageError(f"{exc.message} (see 'callrec jobs list')") from None


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _schedule_text(job: JobView) -> str:
    text = schedule_text(job.schedule)
    return f"{text} (paused)" if job.paused else text


def _outcome(run: JobRunView) -> str:
    dry = " (dry run)" if run.dry_run else ""
    if run.state == "running":
        return f"running{dry} {run.done}/{run.total or '?'}"
    if run.state == "finished":
        text = f"finished{dry}: {run.processed} processed, {run.skipped} skipped, {run.bytes} bytes"
        return text + (f", would purge {len(run.would_purge)}" if run.would_purge else "")
    if run.state == "failed":
        return f"failed{dry} after {run.processed}: {run.error or 'unknown error'}"
    return f"{run.state}{dry}"


def _run_line(job_name: str, run: JobRunView) -> str:
    return "\t".join([_when(run.started_at), job_name, run.run_id, run.node_id, run.trigger,
                      _outcome(run)])


def _requester() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in some containers
        return "cli"


async def _jobs(args: argparse.Namespace) -> int:
    url, node_id = _node_address(args)
    # stdout is for the listing (scripts parse it); the client's own logs (a NATS
    # "disconnected" on exit) go to stderr, errors only.
    setup_logging("cli", node_id, "error")
    nc = await _connect(args, url, node_id)
    try:
        status = await _jobs_status(nc, node_id)
        if args.jobs_command == "list":
            if args.json:
                print(status.model_dump_json(indent=2))
                return 0
            for job in sorted(status.jobs, key=lambda j: j.name):
                last = _outcome(job.last_runs[0]) if job.last_runs else "never run"
                next_run = _when(job.next_run) if not job.paused else "-"
                print("\t".join([job.job_id, job.name, job.kind, summary(job),
                                 _schedule_text(job), f"next {next_run}",
                                 f"runs on {job.runs_on or 'nobody'}", last]))
            return 0
        if args.jobs_command == "history":
            jobs = [_find_job(status, args.job)] if args.job else status.jobs
            runs = sorted(((job, run) for job in jobs for run in job.last_runs),
                          key=lambda pair: pair[1].started_at, reverse=True)
            for job, run in runs:
                if args.json:
                    print(json.dumps({"job": job.name, **run.model_dump(mode="json")}))
                else:
                    print(_run_line(job.name, run))
            return 0
        if args.jobs_command == "add":
            return await _add_job(nc, node_id, status, args)
        job = _find_job(status, args.job)
        if args.jobs_command == "show":
            print(json.dumps(definition_of(job), indent=2))
            return 0
        if args.jobs_command == "remove":
            await bus.publish_event(nc.jetstream(),
                                    jobcommands.remove(status, job.job_id, node_id))
            print(f"{job.name} removed")
            return 0
        if args.jobs_command in ("pause", "resume"):
            paused = args.jobs_command == "pause"
            try:
                event = jobcommands.set_paused(status, job.job_id, paused, node_id,
                                               _requester())
            except JobRuleError as exc:
                raise UsageError(exc.message) from None
            if event is None:
                print(f"{job.name} is already {'paused' if paused else 'active'}")
                return 0
            await bus.publish_event(nc.jetstream(), event)
            print(f"{job.name} {'paused' if paused else 'resumed'}")
            return 0
        return await _run_job(nc, node_id, status, job, args)
    finally:
        await nc.drain()


async def _add_job(
    nc: NatsClient, node_id: str, status: JobsStatus, args: argparse.Namespace
) -> int:
    text = args.definition
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        definition = jobcommands.parse_definition(text)
        event = jobcommands.configure(status, definition, node_id, _requester(), args.job)
    except JobRuleError as exc:
        raise UsageError(f"invalid job: {exc.message}" if exc.kind == "invalid"
                         else exc.message) from None
    await bus.publish_event(nc.jetstream(), event)
    print(event.job_id)
    return 0


async def _run_job(nc: NatsClient, node_id: str, status: JobsStatus, job: JobView,
                   args: argparse.Namespace) -> int:
    """Request a run; with --wait, follow the status until a run that was not there
    before ends (whichever node holds the role runs it)."""
    before = {run.run_id for run in job.last_runs}
    js = nc.jetstream()
    await bus.publish_event(js, jobcommands.request_run(
        status, job.job_id, args.dry_run, node_id, _requester()))
    print(f"run of {job.name} requested" + (" (dry run)" if args.dry_run else ""))
    if not args.wait:
        return 0
    started = time.monotonic()
    deadline = started + args.timeout
    shown, warned = "", False
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        try:
            status = await _jobs_status(nc, node_id)
        except bus.RpcError:
            continue  # the scheduler may be restarting; the run goes on
        current = next((j for j in status.jobs if j.job_id == job.job_id), None)
        if current is None:
            raise UsageError(f"job {job.name!r} was removed")
        run = next((r for r in current.last_runs if r.run_id not in before), None)
        if run is None:
            if not warned and time.monotonic() > started + NO_START_WARNING_S:
                warned = True
                print(f"no run started yet; the maintenance role is held by "
                      f"{status.holder or 'nobody'}", file=sys.stderr)
            continue
        if run.state == "running":
            progress = _outcome(run)
            if progress != shown:
                print(progress, file=sys.stderr)
                shown = progress
            continue
        print(_run_line(current.name, run))
        return 0 if run.state == "finished" else 1
    print(f"callrec: the run did not end within {args.timeout:g}s", file=sys.stderr)
    return 1
