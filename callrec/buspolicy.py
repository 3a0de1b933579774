"""Who may publish and subscribe what on a node's bus: one identity per service.

The node's nats-server enforces these lists, so a compromised or buggy service can
only state the facts it owns (capture cannot forge a user, the catalog cannot purge),
only the sync service answers object reads, and replies go to private inboxes that
no other identity can read. Facts from peers arrive by stream sourcing over the
cluster link, never through these client permissions.
"""

from __future__ import annotations

from typing import Any, Literal

from contracts import subjects

Identity = Literal["node", "signaling", "capture", "catalog", "sync", "scheduler", "web"]
SERVICE_IDENTITIES: tuple[Identity, ...] = (
    "signaling", "capture", "catalog", "sync", "scheduler", "web")
# `node` is the supervisor's and the operator's CLI: it creates the streams, writes
# the first admin, and manages users and jobs from the host's shell.
IDENTITIES: tuple[Identity, ...] = ("node", *SERVICE_IDENTITIES)

# The facts each identity may state: the only events it publishes today.
PUBLISHES: dict[Identity, tuple[str, ...]] = {
    "signaling": ("recording.started", "recording.ended", "recording.participants_changed"),
    "capture": ("recording.completed", "recording.failed", "recording.waveform_computed"),
    "catalog": (),
    # recording.completed: a peer's interrupted copy of a call whose origin fell silent.
    "sync": ("recording.replicated", "recording.completed"),
    "scheduler": (
        "role.changed", "job.run_started", "job.run_progressed", "job.run_finished",
        "job.run_failed", "recording.purged", "recording.exported", "job.target_checked",
    ),
    # The web acts for a signed-in user: users, holds, purges by an admin, jobs.
    "web": (
        "user.upserted", "user.removed", "user.token_issued", "user.token_revoked",
        "recording.hold_changed", "recording.purged",
        "job.configured", "job.removed", "job.run_requested",
        "recording.note_added", "recording.tag_changed", "audit.recorded",
    ),
}

# Request/reply operations each identity may call on its own node.
CALLS: dict[Identity, tuple[str, ...]] = {
    "signaling": (subjects.CAPTURE,),
    "capture": (subjects.SIGNALING,),
    "catalog": (),
    "sync": (),
    "scheduler": (),
    "web": (subjects.CATALOG, subjects.SYNC, subjects.SCHEDULER),
}

# Services that read the cluster's facts (through consumers on the CLUSTER stream).
_JS_READ = [
    "$JS.API.INFO",
    "$JS.API.STREAM.INFO.*",
    f"$JS.API.STREAM.MSG.GET.{subjects.CLUSTER_STREAM}",
    f"$JS.API.DIRECT.GET.{subjects.CLUSTER_STREAM}",
    f"$JS.API.DIRECT.GET.{subjects.CLUSTER_STREAM}.>",
    f"$JS.API.CONSUMER.CREATE.{subjects.CLUSTER_STREAM}",
    f"$JS.API.CONSUMER.CREATE.{subjects.CLUSTER_STREAM}.>",
    f"$JS.API.CONSUMER.DELETE.{subjects.CLUSTER_STREAM}.>",
    f"$JS.API.CONSUMER.INFO.{subjects.CLUSTER_STREAM}.>",
    f"$JS.FC.{subjects.CLUSTER_STREAM}.>",
    f"$JS.ACK.{subjects.CLUSTER_STREAM}.>",
]


def _missed_read(node_id: str) -> list[str]:
    """Reading this node's missed calls (the admin's page), and nothing else of it."""
    stream = subjects.missed_stream(node_id)
    return [
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def permissions(identity: Identity, node_id: str) -> dict[str, Any]:
    """The nats-server `permissions` block of one identity on node `node_id`."""
    if identity == "node":
        return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    inbox = subjects.inbox_prefix(identity)
    publish = [subjects.event(node_id, kind) for kind in PUBLISHES[identity]]
    publish += [subjects.rpc(node_id, target, "*") for target in CALLS[identity]]
    publish += _JS_READ
    subscribe = [
        f"{inbox}.>",
        subjects.rpc(node_id, identity, "*"),
        subjects.metrics_scatter(node_id),
    ]
    if identity == "sync":
        # Heartbeats, object reads from peers (answered chunk by chunk into the
        # requesting sync's inbox), and new peers added as sources.
        publish += [
            subjects.heartbeat(node_id),
            subjects.rpc("*", subjects.SYNC, subjects.SYNC_READ),
            subjects.rpc("*", subjects.SYNC, subjects.SYNC_READ_LIVE),
            f"{inbox}.>",
            f"$JS.API.STREAM.UPDATE.{subjects.CLUSTER_STREAM}",
        ]
        subscribe.append(subjects.all_heartbeats())
        # Progress of every node's recordings in progress (in-flight replication):
        # batched, and one recording a message as capture sent it before.
        subscribe += [subjects.all_live_batches(), subjects.all_live()]
    if identity == "capture":
        # Progress of this node's recordings in progress, after each round of steps.
        publish.append(subjects.live_batch(node_id))
    if identity == "scheduler":
        subscribe.append(subjects.all_heartbeats())
    if identity == "signaling":
        # Refused INVITEs, into the node's bounded missed-calls stream (not facts).
        publish.append(subjects.missed(node_id))
    if identity == "web":
        publish.append(subjects.metrics_scatter(node_id))
        # The audit appender reads its chain's head (and its sequence in the node's own
        # stream, for the expected-last-subject-sequence check) where it publishes.
        publish.append(f"$JS.API.STREAM.MSG.GET.{subjects.events_stream(node_id)}")
        publish += _missed_read(node_id)
    return {
        "publish": {"allow": publish},
        "subscribe": {"allow": subscribe},
        # Answer requests (RPCs and the metrics scatter) once each.
        "allow_responses": True,
    }


def authorization_block(node_id: str, passwords: dict[Identity, str]) -> dict[str, Any]:
    """nats-server `authorization` for the node's JetStream server."""
    return {
        "users": [
            {"user": identity, "password": passwords[identity],
             "permissions": permissions(identity, node_id)}
            for identity in IDENTITIES
        ]
    }
