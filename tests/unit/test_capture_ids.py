"""Capture's id rule (ids become file names) and the bind address's family."""

from __future__ import annotations

import socket

import pytest

from services.capture.ports import _family
from services.capture.service import _safe_id


@pytest.mark.parametrize("value", ["rec-0001_a", "a" * 128, "near", "Aufnahme-äöü", "录音1"])
def test_plain_ids_pass_unchanged(value: str) -> None:
    assert _safe_id(value) == value


@pytest.mark.parametrize("value", ["", "a" * 129, "../x", "a/b", "a.b", "a b", "x\n", "ä" * 129])
def test_other_ids_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        _safe_id(value)


def test_bind_family() -> None:
    assert _family("127.0.0.1") == socket.AF_INET
    assert _family("::1") == socket.AF_INET6
    with pytest.raises(ValueError):
        _family("not-an-address")
