"""SIP over UDP and TCP: receive datagrams/streams, hand messages up, send replies back.

Replies go where RFC 3261 18.2.2 / RFC 3581 say: the same TCP connection, or over
UDP to the source address (port from `rport`, else the Via's sent-by port).
Malformed input is counted and dropped (or answered 400 by the core), never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import structlog

from .message import MAX_MESSAGE_SIZE, SipParseError, StreamFramer

log = structlog.get_logger()

MAX_TCP_CONNECTIONS = 1024
TCP_IDLE_TIMEOUT = 3600.0


@dataclass(frozen=True)
class Peer:
    """Where a request came from and how to answer it."""

    transport: str  # "UDP" or "TCP"
    host: str
    port: int
    connection: TcpConnection | None = None

    def send(self, data: bytes) -> None:
        if self.connection is not None:
            self.connection.send(data)


Receiver = Callable[[bytes, Peer], None]


class UdpTransport(asyncio.DatagramProtocol):
    def __init__(self, on_message: Receiver) -> None:
        self.on_message = on_message
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        transport.max_size = MAX_MESSAGE_SIZE + 1  # type: ignore[attr-defined]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data in (b"\r\n\r\n", b"\r\n", b"\0\0\0\0"):
            return  # keep-alives
        self.on_message(data, Peer("UDP", addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        log.debug("udp_error", error=str(exc))

    def send_to(self, data: bytes, host: str, port: int) -> None:
        if self.transport is not None:
            self.transport.sendto(data, (host, port))


class TcpConnection(asyncio.Protocol):
    def __init__(self, server: TcpServer) -> None:
        self.server = server
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if len(self.server.connections) >= MAX_TCP_CONNECTIONS:
            log.warning("tcp_connection_refused", reason="too many connections")
            transport.close()
            return
        self.transport = transport
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = Peer("TCP", host, port, self)
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            return
        try:
            messages = self.framer.feed(data)
        except SipParseError as exc:
            self.server.framing_errors += 1
            log.warning("tcp_framing_error", peer=f"{self.peer.host}:{self.peer.port}",
                        error=str(exc))
            self.close()
            return
        for message in messages:
            self.server.on_message(message, self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class TcpServer:
    def __init__(self, on_message: Receiver) -> None:
        self.on_message = on_message
        self.connections: set[TcpConnection] = set()
        self.framing_errors = 0
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: TcpConnection(self), host, port, reuse_address=True
        )

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for connection in list(self.connections):
            connection.close()


class SipTransports:
    """Both listeners on one port, and the one place that knows how to answer a peer."""

    def __init__(self, on_message: Receiver) -> None:
        self.udp = UdpTransport(on_message)
        self.tcp = TcpServer(on_message)

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        await loop.create_datagram_endpoint(lambda: self.udp, local_addr=(host, port),
                                            family=family)
        await self.tcp.start(host, port)

    def reply(self, peer: Peer, data: bytes, via_port: int | None, rport: bool) -> None:
        """Send a response to the peer a request came from."""
        if peer.transport == "TCP":
            peer.send(data)
            return
        port = peer.port if rport or via_port is None else via_port
        self.udp.send_to(data, peer.host, port)

    def send_request(self, peer: Peer, data: bytes) -> None:
        """Send an in-dialog request (e.g. BYE) back towards a peer."""
        if peer.transport == "TCP":
            peer.send(data)
        else:
            self.udp.send_to(data, peer.host, peer.port)

    def close(self) -> None:
        if self.udp.transport is not None:
            self.udp.transport.close()
        with contextlib.suppress(Exception):
            self.tcp.close()
