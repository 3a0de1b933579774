"""HTTP Range parsing: what browsers send when seeking in a recording."""

from __future__ import annotations

import pytest

from services.web.ranges import RangeNotSatisfiable, content_range, parse_range


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None),
        ("", 100, None),
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=10-", 100, (10, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-1000", 100, (0, 99)),
        ("bytes=50-5000", 100, (50, 99)),
        ("bytes=99-99", 100, (99, 99)),
        ("BYTES = 1 - 2", 100, (1, 2)),
        ("bytes=0-0", 1, (0, 0)),
    ],
)
def test_satisfiable(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    "header",
    [
        "bytes=0-1,5-6",  # multi-range: answered with the full body
        "items=0-1",
        "bytes=5-1",  # last before first: invalid, ignored
        "bytes=-",
        "bytes=abc",
        "bytes=1-2-3",
        "bytes=0x10-",
        "bytes=" + "9" * 300,
    ],
)
def test_ignored(header: str) -> None:
    assert parse_range(header, 100) is None


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=100-", 100),
        ("bytes=100-200", 100),
        ("bytes=-0", 100),
        ("bytes=0-", 0),
        ("bytes=-5", 0),
    ],
)
def test_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as info:
        parse_range(header, size)
    assert info.value.size == size


def test_content_range() -> None:
    assert content_range(0, 9, 100) == "bytes 0-9/100"
