"""What every controller shares: the `Backend` port, the per-app `WebState`, and the
request helpers (reading a JSON body within limits, parsing times).

The handlers only translate HTTP to backend calls and back; NATS lives in `service.py`,
so the app can be exercised with a fake backend. Every hostile input maps to a 4xx,
and backend outages to a 503, never a 500.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from litestar import Request
from litestar.exceptions import (
    HTTPException,
    NotFoundException,
    ValidationException,
)
from pydantic import BaseModel, ValidationError

from callrec.jobspec import MAX_BODY, describe_errors
from callrec.metrics import Counter
from callrec.store import ObjectStore
from callrec.users import UserEvent, UsersProjection
from contracts.v1.events import (
    EventBase,
    RecordingCompleted,
    RecordingNoteAdded,
    RecordingPurged,
    RecordingTagChanged,
)
from contracts.v1.numbers import NumberPlan
from contracts.v1.rpc import (
    Annotations,
    JobsStatus,
    RolesStatus,
    SearchRequest,
    SearchResult,
    SyncStatus,
    Waveform,
)

from .auth import Authenticator, Principal
from .media import MediaCache
from .security import authenticate
from .validation import valid_recording_id

MAX_OFFSET = 10_000_000
JOB_APPLY_WAIT_S = 2.0
SCHEDULER_SILENT = (
    "the scheduler service did not answer: jobs are unavailable right now, retry shortly"
)
B = TypeVar("B", bound=BaseModel)


class BackendUnavailable(RuntimeError):
    """A service behind the web (catalog, NATS) did not answer: the client gets a 503."""


class Backend(Protocol):
    """What the HTTP layer needs from the rest of the node."""

    node_id: str
    users: UsersProjection

    @property
    def held(self) -> AbstractSet[str]: ...  # recording ids under legal hold (contracts.v1.holds)

    async def search(
        self, request: SearchRequest, visible_numbers: list[str] | None
    ) -> SearchResult: ...

    async def get(self, recording_id: str) -> RecordingCompleted | None: ...

    async def publish_user_event(self, event: UserEvent) -> None:
        """Store a user fact (user, token) and wait (bounded) until `users` shows it."""
        ...

    async def purge_recording(self, event: RecordingPurged) -> bool:
        """Store the purge; True once the local catalog no longer lists the recording."""
        ...

    async def sync_status(self) -> SyncStatus | None:
        """This node's replication view; None when the sync service does not answer."""
        ...

    async def roles_status(self) -> RolesStatus | None:
        """The maintenance role as this node sees it; None when the scheduler is silent."""
        ...

    async def jobs_status(self) -> JobsStatus | None:
        """The maintenance jobs as this node's scheduler sees them; None when silent."""
        ...

    async def publish_event(self, event: EventBase) -> None:
        """Store a fact (jobs, legal hold); raises BackendUnavailable when it cannot."""
        ...

    async def waveform(self, recording_id: str) -> Waveform | None:
        """The stored peaks of the copy the catalog lists; None when it has none."""
        ...

    async def annotations(self, recording_id: str) -> Annotations:
        """A recording's notes and current tags, as the local catalog projects them."""
        ...

    async def annotate(self, event: RecordingNoteAdded | RecordingTagChanged) -> bool:
        """Store a note or tag change; True once the local catalog shows it (bounded)."""
        ...

    async def metrics_texts(self) -> list[str]: ...

    async def health(self) -> dict[str, str]: ...


@dataclass
class WebState:
    backend: Backend
    store: ObjectStore
    media: MediaCache
    auth: Authenticator
    csrf_refused: Counter
    # How long a change waits for the local scheduler to show it (so a GET right
    # after a POST sees it); the change is stored either way.
    job_apply_wait_s: float = JOB_APPLY_WAIT_S
    # How long saving an export job waits for the maintenance role holder's check of
    # its target (a replicated `job.target_checked`); reported as pending after that.
    target_check_wait_s: float = 5.0
    # The node's number plan: a recording's numbers are compared as sent and as the
    # extension they map to, as the catalog's search does.
    numbers: NumberPlan = field(default_factory=NumberPlan)

    async def require(self, request: Request[Any, Any, Any]) -> Principal:
        """The caller, as the login guard authenticated them before the body was read."""
        return await authenticate(request)

    async def visible_record(self, principal: Principal, recording_id: str) -> RecordingCompleted:
        """The recording if it exists and this user may see it; 404 either way otherwise."""
        if not valid_recording_id(recording_id):
            raise ValidationException(detail="invalid recording id")
        record = await self.backend.get(recording_id)
        if record is None or not principal.may_see(sorted(self.numbers.forms(
                record.metadata.numbers()))):
            raise NotFoundException(detail="unknown recording")
        return record


def web_state(request: Request[Any, Any, Any]) -> WebState:
    state: WebState = request.app.state["web"]
    return state


def parse_when(value: str | None, name: str) -> datetime | None:
    """ISO 8601 datetime from a query parameter; naive values are taken as UTC."""
    if value is None or value == "":
        return None
    text = value.strip()
    if len(text) > 64:
        raise ValidationException(detail=f"{name}: not an ISO 8601 datetime")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        try:
            # A '+' of a UTC offset often arrives as a space after URL decoding.
            parsed = datetime.fromisoformat(text.replace(" ", "+"))
        except ValueError:
            raise ValidationException(detail=f"{name}: not an ISO 8601 datetime") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def record_json(record: RecordingCompleted, held: AbstractSet[str]) -> dict[str, Any]:
    return {**record.model_dump(mode="json"), "legal_hold": record.recording_id in held}


async def read_body(request: Request[Any, Any, Any], model: type[B], optional: bool = False) -> B:
    """The JSON body as `model`, every problem as one readable 400 (not Litestar's
    generic "validation failed")."""
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise HTTPException(status_code=413, detail="request body too large")
    if optional and not raw.strip():
        return model()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise ValidationException(detail=describe_errors(exc)) from None
