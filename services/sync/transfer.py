"""Object transfer between nodes: the read RPC's wire format and a resumable pull.

Chunks travel as raw bytes (no JSON, no base64) with metadata in headers. The
reader pulls one chunk at a time, so a slow disk or link throttles the transfer by
itself, and it appends to a part file so a crash or a cut link resumes, not restarts.
The pages of recordings in progress travel the same way, many recordings a request
(ReadLiveRequest: one JSON line describing the parts, then their raw bytes).
"""

from __future__ import annotations

import asyncio
import enum
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from callrec.store import ObjectMismatch, ObjectStore, StoreKeyError, sha256_file
from contracts.subjects import is_plain_id
from contracts.v1.rpc import (
    LivePart,
    LiveRange,
    ReadLiveReply,
    ReadLiveRequest,
    ReadObjectRequest,
)

from .domain import chunk_plan

ERROR_HEADER = "Callrec-Error"
SIZE_HEADER = "Callrec-Size"
# Below the default 1 MB max_payload of the core servers that carry inter-node traffic.
CHUNK_BYTES = 512 * 1024
REQUEST_TIMEOUT_S = 5.0


class TransferError(RuntimeError):
    """The holder did not answer or answered with an error: try another one later."""


class Outcome(enum.Enum):
    DONE = "done"
    UNAVAILABLE = "unavailable"
    MISMATCH = "mismatch"


@dataclass(frozen=True)
class Chunk:
    data: bytes
    total_size: int | None


# (subject, request bytes) -> (reply data, reply headers); raises on timeout/no responders.
Requester = Callable[[str, bytes], Awaitable[tuple[bytes, dict[str, str]]]]


LIVE_FILE = "live.opus"


def live_file(capture_root: Path, recording_id: str) -> Path | None:
    """The live Ogg/Opus file capture is writing for a recording in progress, if any
    (in the recording's directory under `active/`, or directly under capture's root)."""
    if not is_plain_id(recording_id):
        return None
    for candidate in (capture_root / "active" / recording_id / LIVE_FILE,
                      capture_root / recording_id / LIVE_FILE):
        if candidate.is_file():
            return candidate
    return None


def _serve_live(capture_root: Path | None, request: ReadObjectRequest
                ) -> tuple[bytes, dict[str, str]]:
    assert request.live is not None
    data, size, error = _read_live(capture_root, request.live, request.offset, request.length)
    if error is not None:
        return b"", {ERROR_HEADER: error}
    return data, {SIZE_HEADER: str(size)}


def _read_live(capture_root: Path | None, recording_id: str, offset: int, length: int
               ) -> tuple[bytes, int | None, str | None]:
    """Up to `length` bytes at `offset` of a recording's live file: (data, the file's
    size, None), or (b"", None, why) when there is no such file to read."""
    if capture_root is None or not is_plain_id(recording_id):
        return b"", None, "invalid live recording id"
    path = live_file(capture_root, recording_id)
    if path is None:
        return b"", None, "not found"
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(offset)
            data = handle.read(max(0, min(length, size - offset)))
    except OSError as exc:
        return b"", None, f"read failed: {exc.strerror or exc}"
    return data, size, None


def serve_live_ranges(capture_root: Path | None, raw: bytes,
                      budget: int = CHUNK_BYTES) -> tuple[bytes, dict[str, str]]:
    """Answer a ReadLiveRequest: (body, headers). The body is the ReadLiveReply line
    then the parts' bytes; at most `budget` bytes in all (a reply must fit a message),
    so the ranges past it get none this time and are asked again. Never raises."""
    try:
        request = ReadLiveRequest.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        return b"", {ERROR_HEADER: f"invalid request: {str(exc)[:200]}"}
    parts: list[LivePart] = []
    chunks: list[bytes] = []
    for asked in request.ranges:
        length = min(asked.length, budget)
        if length <= 0:
            parts.append(LivePart(recording_id=asked.recording_id, offset=asked.offset,
                                  length=0, skipped=True))
            continue
        data, size, error = _read_live(capture_root, asked.recording_id, asked.offset, length)
        budget -= len(data)
        chunks.append(data)
        parts.append(LivePart(recording_id=asked.recording_id, offset=asked.offset,
                              length=len(data), size=size, error=error))
    head = ReadLiveReply(parts=parts).model_dump_json().encode()
    return b"".join([head, b"\n", *chunks]), {}


def serve_read(store: ObjectStore, raw: bytes, capture_root: Path | None = None
               ) -> tuple[bytes, dict[str, str]]:
    """Answer one read request from our store, or from a live file under
    `capture_root`: (data, headers). Never raises."""
    try:
        request = ReadObjectRequest.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        return b"", {ERROR_HEADER: f"invalid request: {str(exc)[:200]}"}
    if request.live is not None:
        # One live range a request: how peers before ReadLiveRequest pull (a cluster
        # upgraded one node at a time has both), still answered.
        return _serve_live(capture_root, request)
    key = request.object_key
    if ".." in key or key.startswith("/"):
        return b"", {ERROR_HEADER: "invalid object key"}
    try:
        if not store.exists(key):
            return b"", {ERROR_HEADER: "not found"}
        size = store.size(key)
        end = min(size, request.offset + request.length)
        data = b"".join(store.read_range(key, request.offset, end)) if end > request.offset \
            else b""
    except StoreKeyError:
        return b"", {ERROR_HEADER: "invalid object key"}
    except OSError as exc:
        return b"", {ERROR_HEADER: f"read failed: {exc.strerror or exc}"}
    return data, {SIZE_HEADER: str(size)}


async def read_chunk(request: Requester, subject: str, key: str, offset: int,
                     length: int, live: str | None = None) -> Chunk:
    body = ReadObjectRequest(object_key=key, offset=offset, length=length, live=live)
    try:
        data, headers = await request(subject, body.model_dump_json().encode())
    except Exception as exc:
        raise TransferError(f"{type(exc).__name__}: {exc}") from exc
    error = headers.get(ERROR_HEADER)
    if error:
        raise TransferError(error)
    size = headers.get(SIZE_HEADER)
    return Chunk(data, int(size) if size and size.isdigit() else None)


async def read_live_ranges(request: Requester, subject: str, ranges: list[LiveRange]
                           ) -> list[bytes | None]:
    """The new bytes of each of `ranges` from their origin, in one round trip: b"" for
    a range it had nothing for or could not read, None for one it left for the next
    request (its reply was full). Raises TransferError when the origin does not
    answer or its reply does not match what was asked."""
    body = ReadLiveRequest(ranges=ranges).model_dump_json().encode()
    try:
        data, headers = await request(subject, body)
    except Exception as exc:
        raise TransferError(f"{type(exc).__name__}: {exc}") from exc
    error = headers.get(ERROR_HEADER)
    if error:
        raise TransferError(error)
    end = data.find(b"\n")
    try:
        reply = ReadLiveReply.model_validate_json(data[:end] if end >= 0 else b"")
    except ValidationError as exc:
        raise TransferError(f"invalid live reply: {str(exc)[:200]}") from None
    if len(reply.parts) != len(ranges) or any(
            part.recording_id != asked.recording_id or part.offset != asked.offset
            or part.length > asked.length or (part.skipped and part.length)
            for part, asked in zip(reply.parts, ranges, strict=True)):
        raise TransferError("live reply does not match the ranges asked")
    if end + 1 + sum(part.length for part in reply.parts) != len(data):
        raise TransferError("live reply body does not match its parts")
    view = memoryview(data)
    position = end + 1
    out: list[bytes | None] = []
    for part in reply.parts:
        out.append(None if part.skipped else bytes(view[position:position + part.length]))
        position += part.length
    return out


async def pull_object(request: Requester, subject: str, key: str, size: int, sha256: str,
                      part: Path, chunk: int = CHUNK_BYTES,
                      on_bytes: Callable[[int], None] | None = None,
                      keep_going: Callable[[], bool] = lambda: True) -> Outcome:
    """Complete `part` from a holder and verify it; the part stays for a resume when
    the holder stops answering, and is deleted when its content proves wrong.

    Not fsynced here: the store syncs what it adopts before the object's rename, and
    a part that a crash cut short or left wrong fails the check and is pulled again.
    (An fsync here ran on the event loop: with 400 completions arriving at once, each
    held up every other fetch and the live copies for a journal commit.)"""
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    with part.open("ab") as out:
        while (step := chunk_plan(have, size, chunk)) is not None:
            if not keep_going():
                return Outcome.UNAVAILABLE
            offset, length = step
            try:
                got = await read_chunk(request, subject, key, offset, length)
            except TransferError:
                out.flush()
                return Outcome.UNAVAILABLE
            if got.total_size is not None and got.total_size != size:
                out.close()
                part.unlink(missing_ok=True)
                return Outcome.MISMATCH
            if not got.data:
                return Outcome.UNAVAILABLE
            out.write(got.data[:length])
            have += min(len(got.data), length)
            if on_bytes is not None:
                on_bytes(min(len(got.data), length))
    digest = await asyncio.to_thread(sha256_file, part)
    if digest != sha256:
        part.unlink(missing_ok=True)
        return Outcome.MISMATCH
    return Outcome.DONE


def holds(store: ObjectStore, key: str, size: int) -> bool:
    """Does the store hold `key` with `size` bytes (the completion's)?"""
    try:
        return store.exists(key) and store.size(key) == size
    except (OSError, ValueError):
        return False


def store_whole_part(store: ObjectStore, key: str, size: int, sha256: str,
                     part: Path) -> Literal["held", "stored", "mismatch", "partial"]:
    """Blocking (a thread's): `key` is held already; or `part` is whole and is
    verified and stored by one read (the part removed); or it is whole and wrong
    (removed, to be pulled again); or it is not whole yet (a pull completes it)."""
    if holds(store, key, size):
        return "held"
    try:
        if part.stat().st_size != size:
            return "partial"
    except FileNotFoundError:
        return "partial"
    try:
        store.adopt_file(key, part, sha256)
    except ObjectMismatch:
        part.unlink(missing_ok=True)
        return "mismatch"
    part.unlink(missing_ok=True)
    return "stored"
