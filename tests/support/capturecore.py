"""A capture service object with no bus and no workers, for tests of its own logic
(journal, file thread, finalize scheduling) that call its handlers directly."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

from callrec.config import NodeConfig
from callrec.metrics import Registry
from callrec.service import ServiceContext
from services.capture.service import Capture


def bare_capture(data_dir: Path, ports: tuple[int, int] = (41000, 41999)) -> Capture:
    config = NodeConfig(node_id="n1", data_dir=data_dir, rtp_port_min=ports[0],
                        rtp_port_max=ports[1])
    ctx = ServiceContext("capture", config, cast(Any, None), cast(Any, None),
                         Registry("capture", "n1"), asyncio.Event())
    return Capture(ctx, cast(Any, None), [], cast(Any, lambda: None))
