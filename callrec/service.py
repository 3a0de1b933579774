"""The common life cycle of a service process: config, logs, NATS, metrics, shutdown.

Each service's `__main__` hands its async `main(ctx)` to `run()`; SIGTERM/SIGINT
cancel it cleanly, so the supervisor can stop a node without losing data.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from contracts import subjects

from . import bus, credentials, gcpolicy
from .config import NodeConfig
from .logs import get_logger, setup_logging
from .metrics import Registry

# The services of a node, each a process the supervisor runs and each answering the
# metrics scatter (so a scrape knows how many answers to wait for).
SERVICES = ("capture", "signaling", "catalog", "sync", "scheduler", "web")


@dataclass
class ServiceContext:
    name: str
    config: NodeConfig
    nc: NatsClient
    js: JetStreamContext
    metrics: Registry
    stopping: asyncio.Event

    @property
    def node_id(self) -> str:
        return self.config.node_id


ServiceMain = Callable[[ServiceContext], Coroutine[Any, Any, None]]


def run(name: str, main: ServiceMain) -> None:
    config = NodeConfig.from_env()
    setup_logging(name, config.node_id, config.log_level)
    asyncio.run(_run(name, config, main))


async def _run(name: str, config: NodeConfig, main: ServiceMain) -> None:
    log = get_logger()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    nc = await bus.connect(config.nats_url, f"{config.node_id}-{name}", *_login(config, name))
    js = nc.jetstream()
    metrics = Registry(name, config.node_id)
    ctx = ServiceContext(name, config, nc, js, metrics, stopping)

    async def on_metrics(msg: Msg) -> None:
        if msg.reply:
            await msg.respond(metrics.render().encode())

    await nc.subscribe(subjects.metrics_scatter(config.node_id), cb=on_metrics)
    gcpolicy.CollectorWatch(metrics).install()
    gcpolicy.tune_gc()
    collector = asyncio.create_task(gcpolicy.collect_periodically(stopping))
    log.info("service_started")
    task = asyncio.create_task(main(ctx))
    stop_wait = asyncio.create_task(stopping.wait())
    done, _ = await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    collector.cancel()  # ending either way: no full collection in the shutdown's grace
    if task in done:
        stop_wait.cancel()
        exc = task.exception()
        if exc is not None:
            log.error("service_crashed", error=repr(exc))
            await _close(nc)
            raise exc
    else:
        # Give the service a moment to finish in-flight work on its own.
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=5.0)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    log.info("service_stopped")
    await _close(nc)


def _login(config: NodeConfig, identity: str) -> tuple[str | None, str | None]:
    """This service's bus identity and password, read from the data dir (never from
    the environment). Without one (a bare nats-server in a unit test) it connects
    anonymously, which a node's own server refuses."""
    password = credentials.bus_password(config.data_dir, identity)
    if password is None:
        get_logger().warning("bus_credentials_missing", identity=identity)
        return None, None
    return identity, password


async def _close(nc: NatsClient) -> None:
    """Flush what we published, then close; drain() can wait long on consumers."""
    with contextlib.suppress(Exception):
        await nc.flush(timeout=2)
    with contextlib.suppress(Exception):
        await nc.close()
