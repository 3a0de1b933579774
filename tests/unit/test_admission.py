"""SIP admission rules (services.signaling.admission), the gate, TCP caps and the framer.

Each test tries to get past a rule and checks it holds, next to the legitimate
use that must keep working. Time is passed in, so nothing here sleeps.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from callrec.metrics import Registry
from services.signaling.admission import (
    AllowList,
    RefusalLog,
    SipAdmission,
    SourceLimiter,
    TcpLimits,
    TcpSlots,
    TokenBucket,
    pending_media_limit,
    same_source,
    source_ip,
)
from services.signaling.gate import SipGate
from services.signaling.sip.message import SipParseError, SipResponse, StreamFramer, parse_message
from services.signaling.sip.transport import (
    MESSAGE_TIMEOUT,
    PBX_TCP_RECEIVE_BUFFER,
    TCP_IDLE_TIMEOUT,
    TCP_PBX_IDLE_TIMEOUT,
    Peer,
    TcpConnection,
    TcpServer,
)

# ---------------------------------------------------------------- allow-list


def test_loopback_bind_allows_only_this_hosts_own_addresses() -> None:
    allow = AllowList.for_node("127.0.0.1", ())
    assert allow.allows("127.0.0.1") and allow.allows("::1")
    assert allow.allows("::ffff:127.0.0.1")  # dual-stack socket
    # Other loopback addresses are other local users / the tests' strangers.
    assert not allow.allows("127.0.0.2") and not allow.allows("127.1.2.3")
    assert not allow.closed


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "10.0.0.5"])
def test_bind_beyond_loopback_without_allow_list_admits_nobody(bind: str) -> None:
    allow = AllowList.for_node(bind, ())
    assert allow.closed
    for host in ("127.0.0.1", "10.0.0.1", "::1", "192.0.2.7"):
        assert not allow.allows(host)


def test_configured_networks_replace_the_default() -> None:
    allow = AllowList.for_node("0.0.0.0", ("10.1.0.0/16", "192.0.2.7", "2001:db8::/32"))
    assert not allow.closed
    assert allow.allows("10.1.200.3") and allow.allows("192.0.2.7")
    assert allow.allows("2001:db8::1") and allow.allows("::ffff:10.1.0.9")
    assert not allow.allows("10.2.0.1") and not allow.allows("192.0.2.8")
    assert not allow.allows("127.0.0.1")  # an explicit list is the whole list
    assert not allow.allows("not-an-address")


def test_bad_cidr_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="--sip-allow"):
        AllowList.for_node("0.0.0.0", ("10.0.0.0/33",))


def test_same_source_sees_through_ipv4_mapped_addresses() -> None:
    assert same_source("127.0.0.1", "::ffff:127.0.0.1")
    assert not same_source("127.0.0.1", "127.0.0.2")
    assert not same_source("garbage", "garbage")
    assert source_ip("fe80::1%eth0") is not None


def test_config_and_cli_accept_sip_allow() -> None:
    from callrec.cli import build_parser, config_from_args
    from callrec.config import NodeConfig

    args = build_parser().parse_args(["up", "--sip-allow", "10.0.0.0/8", "--sip-allow",
                                      "192.0.2.7", "--sip-rate", "500", "--media-timeout", "0"])
    config = config_from_args(args)
    assert config.sip_allow == ("10.0.0.0/8", "192.0.2.7/32")
    assert config.sip_rate == 500 and config.media_timeout_s == 0
    assert NodeConfig().media_timeout_s == 30.0  # on by default
    with pytest.raises(ValueError, match="sip-allow"):
        NodeConfig(sip_allow=("nonsense",))


# ---------------------------------------------------------------- rates


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=5.0, now=0.0)
    assert sum(bucket.take(0.0) for _ in range(20)) == 5
    assert bucket.take(0.05) is False  # half a token
    assert bucket.take(0.1) is True
    assert sum(bucket.take(100.0) for _ in range(20)) == 5  # never more than the burst


def test_source_limiter_is_per_source_and_bounded() -> None:
    limiter = SourceLimiter(rate=1.0, burst=2.0, max_sources=100)
    assert [limiter.take("a", 0.0) for _ in range(3)] == [True, True, False]
    assert limiter.take("b", 0.0)  # another source has its own bucket
    for n in range(1000):  # a spoofing stranger cannot grow memory without bound
        limiter.take(f"10.0.{n // 256}.{n % 256}", 0.0)
    assert len(limiter.buckets) == 100


def test_pbx_gets_a_generous_rate_then_over_limit() -> None:
    admission = SipAdmission(AllowList.for_node("127.0.0.1", ()), 1000.0, 1000.0, 0.0)
    verdicts = [admission.classify("127.0.0.1", 0.0) for _ in range(1200)]
    assert verdicts.count("admit") == 1000 and verdicts.count("over_limit") == 200
    assert admission.classify("127.0.0.1", 0.5) == "admit"  # refilled


def test_strangers_get_a_few_refusals_then_silence() -> None:
    admission = SipAdmission(AllowList.for_node("127.0.0.1", ()), 1000.0, 1000.0, 0.0)
    verdicts = [admission.classify("127.0.0.2", 0.0) for _ in range(100)]
    refused = verdicts.count("refuse")
    assert 1 <= refused <= 10 and verdicts.count("drop") == 100 - refused
    # Spoofing many sources: the shared budget bounds the 403s we emit in all.
    many = [admission.classify(f"10.9.{n // 256}.{n % 256}", 0.0) for n in range(5000)]
    assert many.count("refuse") <= 100
    # A PBX is never slowed by strangers.
    assert admission.classify("127.0.0.1", 0.0) == "admit"


def test_refusal_log_once_a_minute_per_source_with_count() -> None:
    refusals = RefusalLog(interval=60.0)
    assert refusals.note("127.0.0.2", "not_allowed", 0.0) == 1
    assert all(refusals.note("127.0.0.2", "not_allowed", t) is None for t in range(1, 59))
    assert refusals.note("127.0.0.3", "not_allowed", 30.0) == 1  # its own minute
    assert refusals.note("127.0.0.2", "not_allowed", 61.0) == 59  # 58 unlogged + this one


def test_pending_media_limit_defaults_to_half_the_licences() -> None:
    assert pending_media_limit(None, 100) == 50
    assert pending_media_limit(None, 1) == 1
    assert pending_media_limit(7, 100) == 7


# ---------------------------------------------------------------- gate


class Replies:
    def __init__(self) -> None:
        self.sent: list[tuple[Peer, bytes]] = []

    def reply(self, peer: Peer, data: bytes, via_port: int | None, rport: bool) -> None:
        self.sent.append((peer, data))

    def statuses(self) -> list[int]:
        out = []
        for _, data in self.sent:
            message = parse_message(data)
            assert isinstance(message, SipResponse)
            out.append(message.status)
        return out


def request(method: str, n: int, to_tag: str | None = None) -> bytes:
    to = "<sip:9999@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    return (f"{method} sip:9999@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.2:5999;branch=z9hG4bK-{n};rport\r\n"
            "From: <sip:1001@127.0.0.2>;tag=x\r\n"
            f"To: {to}\r\nCall-ID: c{n}\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n").encode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_gate(allow: tuple[str, ...] = (), bind: str = "127.0.0.1", rate: float = 1000.0,
              over_limit: list[bytes] | None = None,
              ) -> tuple[SipGate, Replies, list[bytes], Registry, Clock]:
    """A gate whose admitted messages land in `forwarded` and those over the PBX's rate
    in `over_limit` (by default in `forwarded` too)."""
    registry = Registry("signaling", "n1")
    clock = Clock()
    gate = SipGate(allow=AllowList.for_node(bind, allow), pbx_rate=rate, pbx_burst=rate,
                   metrics=registry, clock=clock)
    replies, forwarded = Replies(), []
    over = forwarded if over_limit is None else over_limit
    gate.connect(lambda data, peer, received_at: forwarded.append(data),
                 lambda data, peer, received_at: over.append(data), replies)
    return gate, replies, forwarded, registry, clock


def test_gate_answers_strangers_403_then_drops_and_counts_everything() -> None:
    gate, replies, forwarded, registry, _ = make_gate()
    stranger = Peer("UDP", "127.0.0.2", 5999)
    for n in range(100):
        gate.on_message(request("INVITE", n), stranger)
    gate.on_message(request("OPTIONS", 1000), Peer("UDP", "127.0.0.3", 5999))
    assert forwarded == []  # the UAS never saw any of it
    statuses = replies.statuses()
    assert set(statuses) == {403} and 2 <= len(statuses) <= 11
    assert gate.refusals.get(reason="not_allowed") == len(statuses)
    assert gate.refusals.get(reason="not_allowed_drop") == 101 - len(statuses)
    assert 'signaling_sip_refused_total{' in registry.render()


def test_gate_never_answers_a_strangers_ack_or_response() -> None:
    gate, replies, forwarded, _, _ = make_gate()
    stranger = Peer("UDP", "127.0.0.2", 5999)
    gate.on_message(request("ACK", 1), stranger)
    gate.on_message(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKa\r\n"
                    b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\n"
                    b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n", stranger)
    assert replies.sent == [] and forwarded == []
    assert gate.refusals.get(reason="not_allowed_drop") == 2


def test_gate_forwards_the_pbx_and_hands_what_is_over_its_rate_to_the_uas_as_such() -> None:
    """The gate only decides; the UAS's transactions answer (tests/unit/test_overload.py),
    so a retransmission is never answered differently from its first copy."""
    over: list[bytes] = []
    gate, replies, forwarded, _, clock = make_gate(rate=10.0, over_limit=over)
    pbx = Peer("UDP", "127.0.0.1", 5999)
    for n in range(10):
        gate.on_message(request("INVITE", n), pbx)
    assert len(forwarded) == 10 and over == []
    gate.on_message(request("INVITE", 10), pbx)
    gate.on_message(request("BYE", 12, to_tag="ours"), pbx)
    assert over == [request("INVITE", 10), request("BYE", 12, to_tag="ours")]
    assert replies.sent == [] and len(forwarded) == 10
    clock.now += 1.0
    gate.on_message(request("INVITE", 14), pbx)
    assert len(forwarded) == 11


def test_gate_closed_node_refuses_even_loopback(caplog: Any) -> None:
    gate, replies, forwarded, _, _ = make_gate(bind="0.0.0.0")
    gate.on_message(request("INVITE", 1), Peer("UDP", "127.0.0.1", 5999))
    assert forwarded == [] and replies.statuses() == [403]


# ---------------------------------------------------------------- TCP caps and timeouts


def test_tcp_slots_per_source_and_strangers_share() -> None:
    slots = TcpSlots(TcpLimits(per_source=3, total=20))
    assert [slots.acquire("a", True) for _ in range(4)] == [None, None, None, "tcp_source_cap"]
    # Strangers together get a quarter of the total...
    got = [slots.acquire(f"s{n}", False) for n in range(10)]
    assert got.count(None) == 5 and got.count("tcp_global_cap") == 5
    # ...so allow-listed PBXs still find room.
    assert slots.acquire("b", True) is None
    slots.release("a", True)
    assert slots.acquire("a", True) is None
    slots.release("s0", False)
    assert slots.acquire("s9", False) is None


class FakeTcpTransport(asyncio.Transport):
    def __init__(self, host: str) -> None:
        super().__init__()
        self.host = host
        self.closed = False
        self.aborted = False
        self.written: list[bytes] = []
        self.receive_buffer: int | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.host, 40000) if name == "peername" else None

    def hold_backlog(self, size: int) -> None:
        self.receive_buffer = size

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


def open_connection(server: TcpServer, host: str) -> tuple[TcpConnection, FakeTcpTransport]:
    connection = TcpConnection(server)
    transport = FakeTcpTransport(host)
    connection.connection_made(transport)
    return connection, transport


def test_tcp_server_caps_sources_and_times_out_silent_connections() -> None:
    clock = Clock()
    refused: list[tuple[str, str]] = []
    received: list[bytes] = []
    server = TcpServer(lambda data, peer, received_at: received.append(data),
                       is_allowed=lambda host: host == "127.0.0.1",
                       on_refused=lambda host, reason: refused.append((host, reason)),
                       limits=TcpLimits(per_source=4, total=16), clock=clock)
    idle = [open_connection(server, "127.0.0.2") for _ in range(6)]
    assert sum(t.aborted for _, t in idle) == 2 and len(server.connections) == 4
    strangers = [open_connection(server, f"127.0.0.{n}") for n in range(3, 10)]
    assert sum(t.aborted for _, t in strangers) == 7  # strangers' share (4) is used up
    assert {r for _, r in refused} == {"tcp_source_cap", "tcp_global_cap"}
    pbx, pbx_transport = open_connection(server, "127.0.0.1")
    assert not pbx_transport.aborted
    # Only a PBX gets the kernel buffer that holds a stall's INVITEs with their stamps.
    assert pbx_transport.receive_buffer == PBX_TCP_RECEIVE_BUFFER
    assert {t.receive_buffer for _, t in idle + strangers} == {None}
    pbx.data_received(request("OPTIONS", 1))
    assert len(received) == 1

    # A stranger dripping half a message is closed once it owes one for too long.
    drip, drip_transport = idle[0]
    drip.data_received(b"INVITE sip:x SIP/2.0\r\n")
    clock.now += MESSAGE_TIMEOUT + 1
    pbx.data_received(request("OPTIONS", 2))  # the PBX keeps talking
    server.sweep()
    assert drip_transport.closed and not pbx_transport.closed
    for connection, transport in idle:
        if transport.closed:
            connection.connection_lost(None)
    assert len(server.connections) == 1  # every stranger owed a first message
    # An allow-listed PBX may stay idle much longer than a stranger.
    clock.now += TCP_IDLE_TIMEOUT + 1
    server.sweep()
    assert not pbx_transport.closed
    clock.now += TCP_PBX_IDLE_TIMEOUT
    server.sweep()
    assert pbx_transport.closed


# ---------------------------------------------------------------- framer costs O(bytes)


def big_message(size: int) -> bytes:
    head = b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.2;branch=z9hG4bKx\r\n"
    filler = b"X-Pad: " + b"a" * 70 + b"\r\n"
    return head + filler * ((size - len(head)) // len(filler)) + b"Content-Length: 4\r\n\r\nbody"


def drip_seconds(data: bytes, step: int = 1) -> float:
    framer = StreamFramer()
    out: list[bytes] = []
    started = time.process_time()
    for i in range(0, len(data), step):
        out += framer.feed(data[i : i + step])
    spent = time.process_time() - started
    assert out == [data] and framer.buffered == 0
    return spent


def test_framer_resumes_its_search_across_segments() -> None:
    message = big_message(2000)
    framer = StreamFramer()
    for i, byte in enumerate(message[:-5]):
        assert framer.feed(bytes([byte])) == [], i
    # A blank line split over segments is still found, the body then awaited.
    assert framer.feed(message[-5:-3]) == []
    assert framer.feed(message[-3:] + b"\r\n" + message[:10]) == [message]
    assert framer.buffered == 10


def test_framer_caps_the_header_block_and_the_body() -> None:
    framer = StreamFramer(max_size=1024)
    with pytest.raises(SipParseError, match="too large"):
        for _ in range(200):
            framer.feed(b"X-Pad: aaaaaaaa\r\n")
    framer = StreamFramer(max_size=1024)
    with pytest.raises(SipParseError, match="too large"):
        framer.feed(b"INVITE sip:a SIP/2.0\r\nContent-Length: 5000\r\n\r\n")


def test_dripping_a_50k_header_block_costs_o_bytes() -> None:
    """Finding 6: 50 KB dripped one byte per segment cost seconds (the whole header
    block was searched again for every byte). Now: linear in the bytes."""
    small, large = big_message(5_000), big_message(50_000)
    drip_small = min(drip_seconds(small) for _ in range(3))
    drip_large = min(drip_seconds(large) for _ in range(3))
    at_once = min(drip_seconds(large, step=len(large)) for _ in range(5))
    # Ten times the bytes: ~10x the work (quadratic would be ~100x).
    assert drip_large < 30 * max(drip_small, 1e-4), (drip_small, drip_large)
    # A byte per feed costs only per-call overhead (was ~13000x before the fix).
    assert drip_large < 1000 * max(at_once, 1e-4), (at_once, drip_large)
    assert drip_large < 1.0


async def test_tcp_server_really_accepts_and_refuses() -> None:
    """The same caps over real loopback sockets."""
    refused: list[str] = []
    server = TcpServer(lambda data, peer, received_at: None,
                       on_refused=lambda h, r: refused.append(r),
                       limits=TcpLimits(per_source=2, total=8))
    await server.start("127.0.0.1", 0)
    port = server.sockname[1]
    writers = []
    for _ in range(4):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
    for _ in range(50):
        await asyncio.sleep(0.01)
        if len(refused) == 2:
            break
    assert refused == ["tcp_source_cap", "tcp_source_cap"] and len(server.connections) == 2
    for writer in writers:
        writer.close()
    server.close()
