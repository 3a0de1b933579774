"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import start_pair
from tests.support.node import Node


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    """Two linked nodes: `a` primary, `b` backup."""
    a, b, _ = start_pair(tmp_path)
    try:
        yield a, b
    finally:
        b.stop()
        a.stop()
