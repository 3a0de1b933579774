"""Recordings from the past on a real node: copies of a real recording's audio under new
ids, stated as `recording.completed` facts with other start times and parties.

The web app's tests need calls from "yesterday afternoon" without waiting a day; the
audio is real (a call the node recorded), so playback, waveforms and downloads are
checked on real content, and only the facts around it are historical.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from contracts import subjects
from contracts.v1.events import Participant, RecordingCompleted
from tests.support.node import Node


@dataclass(frozen=True)
class PastCall:
    started_at: datetime  # timezone-aware
    near: str  # the recorded party's number (the agent's extension)
    far: str  # the other party (the customer)
    near_name: str | None = None
    far_name: str | None = None
    direction: str = "inbound"


def _participants(template: RecordingCompleted, call: PastCall) -> list[Participant]:
    parties: list[Participant] = []
    for party in template.metadata.participants:
        if party.role in ("near", "callee"):
            parties.append(party.model_copy(update={"number": call.near, "name": call.near_name}))
        else:
            parties.append(party.model_copy(update={"number": call.far, "name": call.far_name}))
    return parties


async def add_past_calls(node: Node, template: RecordingCompleted,
                         calls: list[PastCall]) -> list[RecordingCompleted]:
    """State one completed recording per call on `node` (as the node identity); returns
    the facts published. The audio object is a copy of `template`'s."""
    source = node.data_dir / "objects" / template.object_key
    published: list[RecordingCompleted] = []
    nc = await node.bus()
    try:
        js = nc.jetstream()
        for call in calls:
            recording_id = uuid.uuid4().hex
            key = f"recordings/history/{recording_id}.opus"
            target = node.data_dir / "objects" / key
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            duration = timedelta(milliseconds=template.duration_ms)
            metadata = template.metadata.model_copy(update={
                "participants": _participants(template, call),
                "direction": call.direction,
                "recorded_extension": call.near,
                "session_key": f"history-{recording_id}",
            })
            event = template.model_copy(update={
                "event_id": uuid.uuid4().hex,
                "recording_id": recording_id,
                "object_key": key,
                "started_at": call.started_at,
                "ended_at": call.started_at + duration,
                "metadata": metadata,
            })
            await js.publish(subjects.event(node.node_id, event.type),
                             event.model_dump_json().encode(),
                             headers={"Nats-Msg-Id": event.event_id})
            published.append(event)
    finally:
        await nc.close()
    return published
