"""HTTP Range parsing for playback: browsers seek in audio with `Range: bytes=...`.

Only single ranges are honoured; anything else we may legally ignore (RFC 9110
lets a server answer 200 with the whole body), which keeps responses simple.
"""

from __future__ import annotations

import re

_SINGLE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)
_MAX_HEADER = 200


class RangeNotSatisfiable(ValueError):
    """The range lies outside the object: answer 416 with `Content-Range: bytes */size`."""

    def __init__(self, size: int) -> None:
        super().__init__(f"range not satisfiable for size {size}")
        self.size = size


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Inclusive (first, last) byte positions, or None to send the whole object.

    None for: no header, other units, multiple ranges or malformed syntax (all of
    which RFC 9110 allows to be ignored). Raises RangeNotSatisfiable when the
    single range starts past the end, or asks for an empty suffix.
    """
    if not header or len(header) > _MAX_HEADER or "," in header:
        return None
    match = _SINGLE.match(header)
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text and not last_text:
        return None
    if not first_text:
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - suffix), size - 1
    first = int(first_text)
    if last_text:
        last = int(last_text)
        if last < first:
            return None  # syntactically invalid: ignore
    else:
        last = size - 1
    if first >= size:
        raise RangeNotSatisfiable(size)
    return first, min(last, size - 1)


def content_range(first: int, last: int, size: int) -> str:
    return f"bytes {first}-{last}/{size}"
