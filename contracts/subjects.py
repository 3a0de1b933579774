"""NATS subject and stream names, in one place so services cannot drift apart.

Every node publishes only its own facts, on subjects scoped by its node id, into its
own stream; that is what lets peers mirror or source a node's stream later without
loops or double storage.
"""

from __future__ import annotations

import re

VERSION = "v1"
ROOT = "callrec"

_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


def check_node_id(node_id: str) -> str:
    """Node ids become subject tokens and stream names, so they must be plain tokens."""
    if not _NODE_ID.match(node_id):
        raise ValueError(
            f"invalid node id {node_id!r}: use letters, digits, '-' or '_' (max 63 chars)"
        )
    return node_id


def is_plain_id(value: str) -> bool:
    """Recording and stream ids become file and directory names: letters, digits, '-'
    or '_', at most 128 characters (nothing that could climb out of a directory)."""
    return 0 < len(value) <= 128 and all(c.isalnum() or c in "-_" for c in value)


def check_plain_id(value: str) -> str:
    """`value` if it is a plain id (`is_plain_id`), else ValueError."""
    if not is_plain_id(value):
        raise ValueError(f"invalid id {value!r}")
    return value


def event(node_id: str, event_type: str) -> str:
    """Subject on which `node_id` publishes its facts of `event_type` (e.g. recording.completed)."""
    return f"{ROOT}.{VERSION}.{node_id}.evt.{event_type}"


def events_of_type(event_type: str) -> str:
    """Filter matching one event type from any node."""
    return f"{ROOT}.{VERSION}.*.evt.{event_type}"


def node_events(node_id: str) -> str:
    """Filter matching every fact of one node (its stream's subjects)."""
    return f"{ROOT}.{VERSION}.{node_id}.evt.>"


def events_stream(node_id: str) -> str:
    """Name of the JetStream stream that holds a node's own facts."""
    return f"EVENTS_{node_id.replace('-', '_')}"


def missed(node_id: str) -> str:
    """Subject of `node_id`'s missed-call records (refused INVITEs; not facts)."""
    return f"{ROOT}.{VERSION}.{node_id}.missed"


def missed_stream(node_id: str) -> str:
    """Name of the bounded stream (age and size) that keeps a node's missed calls."""
    return f"MISSED_{node_id.replace('-', '_')}"


# Every node's aggregate of all nodes' facts (its own stream plus each peer's, sourced
# over the inter-node link). Projections read this one, so they see the whole cluster.
CLUSTER_STREAM = "CLUSTER"


def js_api_prefix(node_id: str) -> str:
    """JetStream API of another node's domain (each node is its own domain)."""
    return f"$JS.{node_id}.API"


def all_heartbeats() -> str:
    return f"{ROOT}.{VERSION}.*.heartbeat"


def live(node_id: str, recording_id: str) -> str:
    """Core-NATS progress of one recording being encoded live on `node_id` (not
    stored): how capture announced it before `live_batch`; sync still follows it."""
    return f"{ROOT}.{VERSION}.{node_id}.live.{recording_id}"


def live_batch(node_id: str) -> str:
    """Core-NATS progress of several of `node_id`'s recordings at once
    (LiveProgressBatch: one message per round of live steps)."""
    return f"{ROOT}.{VERSION}.{node_id}.progress"


def all_live_batches() -> str:
    """Filter matching every node's batched live progress."""
    return f"{ROOT}.{VERSION}.*.progress"


def all_live() -> str:
    """Filter matching the live progress of every node's recordings."""
    return f"{ROOT}.{VERSION}.*.live.>"


def rpc(node_id: str, service: str, operation: str) -> str:
    """Subject of a request/reply operation served by a service on one node."""
    return f"{ROOT}.{VERSION}.{node_id}.rpc.{service}.{operation}"


def metrics_scatter(node_id: str) -> str:
    """Every service of a node answers on this subject with its Prometheus text."""
    return f"{ROOT}.{VERSION}.{node_id}.metrics"


def heartbeat(node_id: str) -> str:
    """Core-NATS liveness beacon of a node's services (not stored)."""
    return f"{ROOT}.{VERSION}.{node_id}.heartbeat"


# Services and their operations.
CAPTURE = "capture"
CAPTURE_ALLOCATE = "allocate"
CAPTURE_RESERVE = "reserve"
CAPTURE_UPDATE = "update"
CAPTURE_RELEASE = "release"
CAPTURE_FINALIZE = "finalize"
CAPTURE_HEALTH = "health"

SIGNALING = "signaling"
SIGNALING_ACTIVE = "active"

SYNC = "sync"
SYNC_READ = "read"
SYNC_READ_LIVE = "read_live"
SYNC_STATUS = "status"

SCHEDULER = "scheduler"
SCHEDULER_ROLES = "roles"
SCHEDULER_JOBS = "jobs"

CATALOG = "catalog"
CATALOG_SEARCH = "search"
CATALOG_GET = "get"
CATALOG_ANNOTATIONS = "annotations"
CATALOG_WAVEFORM = "waveform"


def inbox_prefix(identity: str) -> str:
    """Private reply inbox of one bus identity: only it may subscribe there."""
    return f"_INBOX_{identity}"
