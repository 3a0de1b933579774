"""structlog JSON logging, set up the same way in every process."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def setup_logging(service: str, node_id: str, level: str = "info") -> None:
    numeric = getattr(logging, level.upper(), logging.INFO)
    # Standard-library loggers (uvicorn, nats, asyncio) go out as the same JSON lines.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.JSONRenderer(),
        ],
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
        ],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service, node=node_id)


def get_logger(**bound: Any) -> Any:
    # Lazy: binding now would freeze whatever config exists before setup_logging().
    return structlog.get_logger(**bound)
