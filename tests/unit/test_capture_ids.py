"""The id rule (recording and stream ids become file names: capture's directories and
object keys, sync's parts, live copies and served live files) and the bind address's
family."""

from __future__ import annotations

import socket

import pytest

from contracts.subjects import check_plain_id, is_plain_id
from services.capture.ports import _family


@pytest.mark.parametrize("value", ["rec-0001_a", "a" * 128, "near", "Aufnahme-äöü", "录音1"])
def test_plain_ids_pass_unchanged(value: str) -> None:
    assert check_plain_id(value) == value and is_plain_id(value)


@pytest.mark.parametrize("value", ["", "a" * 129, "../x", "a/b", "a.b", "a b", "x\n", "ä" * 129])
def test_other_ids_are_refused(value: str) -> None:
    assert not is_plain_id(value)
    with pytest.raises(ValueError):
        check_plain_id(value)


def test_bind_family() -> None:
    assert _family("127.0.0.1") == socket.AF_INET
    assert _family("::1") == socket.AF_INET6
    with pytest.raises(ValueError):
        _family("not-an-address")
