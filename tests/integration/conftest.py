"""What the integration tests share: a real nats-server of their own, per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.natsfixture import NatsServer, start_nats


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    s = start_nats(tmp_path)
    yield s
    s.stop()
