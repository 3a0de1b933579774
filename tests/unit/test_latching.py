"""RTP admission (services.capture.latching) and its use by the stream receiver.

The rule is tried as an attacker would: a stranger first, a stranger on the right
host but another port, a stranger after a restart; the legitimate source must still
be recorded in each case.
"""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from contracts.v1.events import RecordingMetadata
from services.capture.latching import (
    UNKNOWN,
    Endpoint,
    Expected,
    admit,
    endpoint_of,
    expected_from_sdp,
    on_sdp,
)
from services.capture.manifest import RecordingManifest, StreamManifest
from services.capture.receiver import HeldPackets, StreamReceiver
from services.capture.segments import SegmentWriter, read_records

PBX = Endpoint("192.0.2.10", 24580)
PBX_NAT_PORT = Endpoint("192.0.2.10", 61000)
STRANGER = Endpoint("198.51.100.7", 24580)

# ---------------------------------------------------------------- what the SDP says


SDP_CASES = [
    ("192.0.2.10", 24580, Expected("192.0.2.10", 24580)),
    ("192.0.2.10", 9, Expected("192.0.2.10", None)),     # discard placeholder
    ("192.0.2.10", 0, Expected("192.0.2.10", None)),     # stream refused/disabled
    ("192.0.2.10", None, Expected("192.0.2.10", None)),
    ("0.0.0.0", 24580, UNKNOWN),                          # RFC 2543 hold
    ("::", 24580, UNKNOWN),
    (None, 24580, UNKNOWN),                               # no c= at all
    ("pbx.example.com", 24580, UNKNOWN),                  # not an IP literal: no DNS here
    ("2001:DB8::0:1", 4000, Expected("2001:db8::1", 4000)),
    ("::ffff:192.0.2.10", 4000, Expected("192.0.2.10", 4000)),
]


@pytest.mark.parametrize(("address", "port", "expected"), SDP_CASES)
def test_expected_from_sdp(address: str | None, port: int | None, expected: Expected) -> None:
    assert expected_from_sdp(address, port) == expected


def test_expected_from_sdp_answers_the_same_when_asked_again() -> None:
    """Addresses are normalised once and cached: a repeat (another port of the same
    address, the same text after an unusable one) gets the same answer."""
    for address, port, expected in SDP_CASES + SDP_CASES[::-1]:
        assert expected_from_sdp(address, port) == expected
    assert expected_from_sdp("192.0.2.10", 9) == Expected("192.0.2.10", None)
    assert expected_from_sdp("0.0.0.0", 9) == UNKNOWN


def test_endpoint_of_socket_addresses() -> None:
    assert endpoint_of(("192.0.2.10", 5000)) == Endpoint("192.0.2.10", 5000)
    assert endpoint_of(("::ffff:192.0.2.10", 5000, 0, 0)) == Endpoint("192.0.2.10", 5000)
    assert endpoint_of(("fe80::1%eth0", 5000, 0, 2)) == Endpoint("fe80::1", 5000)


# ---------------------------------------------------------------- the admission rule


def test_sdp_address_and_port_admit_only_that_source() -> None:
    expected = Expected(PBX.address, PBX.port)
    assert admit(STRANGER, expected, None) == "wrong_address"
    assert admit(PBX, expected, None) == "latch"
    assert admit(PBX, expected, PBX) == "accept"
    assert admit(STRANGER, expected, PBX) == "wrong_address"
    # Same host, another port, once the real port is latched: dropped.
    assert admit(PBX_NAT_PORT, expected, PBX) == "wrong_port"


def test_sdp_address_with_nat_rewritten_port_latches_that_port() -> None:
    expected = Expected(PBX.address, PBX.port)
    assert admit(PBX_NAT_PORT, expected, None) == "latch"
    assert admit(PBX_NAT_PORT, expected, PBX_NAT_PORT) == "accept"
    assert admit(Endpoint(PBX.address, 61002), expected, PBX_NAT_PORT) == "wrong_port"
    # The exact SDP port always wins the latch back (a port-latch by a local process
    # on the PBX host cannot lock the PBX itself out).
    assert admit(PBX, expected, PBX_NAT_PORT) == "latch"


def test_sdp_address_without_port_latches_first_port_of_that_address() -> None:
    expected = Expected(PBX.address, None)
    assert admit(STRANGER, expected, None) == "wrong_address"
    assert admit(PBX_NAT_PORT, expected, None) == "latch"
    assert admit(PBX, expected, PBX_NAT_PORT) == "wrong_port"


def test_nothing_known_latches_the_first_source() -> None:
    assert admit(STRANGER, UNKNOWN, None) == "latch"
    assert admit(STRANGER, UNKNOWN, STRANGER) == "accept"
    assert admit(PBX, UNKNOWN, STRANGER) == "wrong_address"
    assert admit(Endpoint(STRANGER.address, 1), UNKNOWN, STRANGER) == "wrong_port"


def test_new_sdp_moving_the_media_replaces_the_latch() -> None:
    old = Expected(PBX.address, PBX.port)
    moved = Expected("192.0.2.99", 30000)
    assert on_sdp(old, PBX, moved) == (moved, None)
    assert admit(PBX, moved, None) == "wrong_address"
    assert admit(Endpoint("192.0.2.99", 30000), moved, None) == "latch"


def test_sdp_naming_the_source_overrides_a_first_source_latch() -> None:
    # Delayed offer: a stranger sent first while no SDP was known; the ACK's answer
    # names the PBX: the stranger's latch is gone.
    expected, latched = on_sdp(UNKNOWN, STRANGER, Expected(PBX.address, PBX.port))
    assert latched is None
    assert admit(STRANGER, expected, latched) == "wrong_address"
    # ... and the same answer confirming the first source keeps its latch.
    assert on_sdp(UNKNOWN, PBX, Expected(PBX.address, PBX.port))[1] == PBX


def test_refresh_and_hold_keep_the_latch_and_never_reopen_the_port() -> None:
    expected = Expected(PBX.address, PBX.port)
    # Session refresh with the same SDP: the NAT port latch holds.
    assert on_sdp(expected, PBX_NAT_PORT, expected) == (expected, PBX_NAT_PORT)
    # Hold with c=0.0.0.0 or port 9: what we know stays; no first-source latching.
    assert on_sdp(expected, PBX, expected_from_sdp("0.0.0.0", 24580)) == (expected, PBX)
    assert on_sdp(expected, PBX, expected_from_sdp(PBX.address, 9)) == (expected, PBX)
    # The same address naming another port: that port from now on.
    new = Expected(PBX.address, 24590)
    assert on_sdp(expected, PBX, new) == (new, None)


# ---------------------------------------------------------------- the receiver


def rtp(seq: int) -> bytes:
    return bytes([0x80, 0]) + seq.to_bytes(2, "big") + bytes(8) + b"\xff" * 160


class Harness:
    def __init__(self, path: Path, **kw: object) -> None:
        self.writer = SegmentWriter(path)
        self.path = path
        self.latches: list[Endpoint] = []
        self.drops: list[str] = []
        self.receiver = StreamReceiver(
            self.writer, time.time(), on_latch=self.latches.append,
            on_drop=self.drops.append, **kw,  # type: ignore[arg-type]
        )

    def feed(self, addr: tuple[str, int], seq: int) -> None:
        self.receiver.datagram_received(rtp(seq), addr)

    def stored(self) -> list[int]:
        self.writer.flush()
        return [int.from_bytes(d[2:4], "big") for _, d in read_records(self.path)]


def test_receiver_stores_only_the_sdp_source(tmp_path: Path) -> None:
    h = Harness(tmp_path / "s.seg", expected=Expected(PBX.address, PBX.port))
    h.feed((STRANGER.address, STRANGER.port), 1)  # the stranger is first: still dropped
    h.feed((PBX.address, PBX.port), 2)
    h.feed((STRANGER.address, STRANGER.port), 3)
    h.feed((PBX.address, PBX_NAT_PORT.port), 4)
    h.feed((PBX.address, PBX.port), 5)
    assert h.stored() == [2, 5]
    assert h.latches == [PBX]
    assert h.drops == ["wrong_address", "wrong_address", "wrong_port"]
    assert h.receiver.dropped == {"wrong_address": 2, "wrong_port": 1, "before_answer": 0}
    assert h.receiver.packets == 2


def test_receiver_latches_first_source_when_sdp_says_nothing(tmp_path: Path) -> None:
    h = Harness(tmp_path / "s.seg")
    h.feed(("127.0.0.1", 4000), 1)
    h.feed(("127.0.0.2", 4000), 2)
    h.feed(("127.0.0.1", 4000), 3)
    assert h.stored() == [1, 3]
    # Then the ACK's answer names another source: it takes over.
    h.receiver.expect(Expected("127.0.0.3", 5000), None)
    h.feed(("127.0.0.1", 4000), 4)
    h.feed(("127.0.0.3", 5000), 5)
    assert h.stored() == [1, 3, 5]


def test_non_rtp_from_a_stranger_does_not_latch(tmp_path: Path) -> None:
    h = Harness(tmp_path / "s.seg")
    h.receiver.datagram_received(b"\x00\x01junk-junk-junk", ("127.0.0.2", 4000))
    h.feed(("127.0.0.1", 4000), 1)
    assert h.stored() == [1]
    assert h.receiver.invalid == 1


def test_stranger_logged_at_most_once_a_minute(tmp_path: Path) -> None:
    events: list[str] = []

    class Log:
        def info(self, event: str, **_: object) -> None:
            events.append(event)

        def warning(self, event: str, **_: object) -> None:
            events.append(event)

    h = Harness(tmp_path / "s.seg", expected=Expected(PBX.address, PBX.port), log=Log())
    for seq in range(500):
        h.feed((STRANGER.address, 10000 + seq), seq)
    assert events.count("rtp_stranger_dropped") == 1
    assert h.receiver.dropped["wrong_address"] == 500


# ---------------------------------------------------------------- delayed offer


def test_packets_before_the_delayed_sdp_are_held_then_judged_by_it(tmp_path: Path) -> None:
    """CUCM delayed offer: the port opens before the ACK brings the PBX's answer. A
    stranger spraying ports gets there first; nothing is written until the SDP says
    who the source is, and then only that source's packets are kept."""
    h = Harness(tmp_path / "s.seg", sdp_pending=True)
    h.feed((STRANGER.address, STRANGER.port), 1)
    h.feed((PBX.address, PBX.port), 2)  # the phone's RTP raced the ACK
    h.feed((STRANGER.address, STRANGER.port), 3)
    assert h.stored() == [] and h.latches == []
    h.receiver.expect(Expected(PBX.address, PBX.port), None)  # the ACK's answer
    h.feed((PBX.address, PBX.port), 4)
    h.feed((STRANGER.address, STRANGER.port), 5)
    assert h.stored() == [2, 4]
    assert h.latches == [PBX]
    assert h.receiver.dropped["wrong_address"] == 3


def test_delayed_sdp_saying_nothing_latches_the_first_held_source(tmp_path: Path) -> None:
    h = Harness(tmp_path / "s.seg", sdp_pending=True)
    h.feed(("127.0.0.1", 4000), 1)
    h.feed(("127.0.0.2", 4000), 2)
    h.receiver.expect(expected_from_sdp("0.0.0.0", 9), None)
    assert h.stored() == [1]


def test_no_sdp_in_time_falls_back_to_the_first_source(tmp_path: Path) -> None:
    h = Harness(tmp_path / "s.seg", sdp_pending=True)
    h.feed(("127.0.0.1", 4000), 1)
    h.receiver.settle()
    assert h.stored() == []  # still waiting
    h.receiver.pending_since -= 60
    h.receiver.settle()
    h.feed(("127.0.0.2", 4000), 2)
    h.feed(("127.0.0.1", 4000), 3)
    assert h.stored() == [1, 3]


# ---------------------------------------------------------------- restart


def test_held_packets_come_back_in_order_with_their_source_and_bytes() -> None:
    held = HeldPackets()
    a, b = ("127.0.0.1", 4000), ("127.0.0.2", 4002)
    sent = [(0, a, rtp(1)), (5, b, b"\x80" + bytes(11)), (20, a, rtp(2) + b"x" * 900),
            (20, b, rtp(3)), (4_000_000, a, rtp(4))]
    for arrival_ms, addr, data in sent:
        held.add(arrival_ms, addr, data)
    assert len(held) == 5
    assert list(held) == sent
    assert all(type(data) is bytes for _, _, data in held)


def test_held_packets_are_stored_as_if_never_held(tmp_path: Path) -> None:
    """Segment bytes are identical whether the packets waited for the SDP or not."""
    started = time.time()
    direct = Harness(tmp_path / "direct.seg")
    waited = Harness(tmp_path / "waited.seg", sdp_pending=True)
    for h in (direct, waited):
        h.receiver.started = started
    for seq in range(40):
        for h in (direct, waited):
            h.receiver.datagram_received(rtp(seq) + bytes(seq), ("127.0.0.1", 4000),
                                         started + seq * 0.02)
    waited.receiver.expect(expected_from_sdp("127.0.0.1", 4000), None)
    direct.writer.flush()
    waited.writer.flush()
    assert direct.receiver.packets == waited.receiver.packets == 40
    assert (tmp_path / "direct.seg").read_bytes() == (tmp_path / "waited.seg").read_bytes()


def test_latch_survives_a_restart_through_the_manifest(tmp_path: Path) -> None:
    """Capture crashed after the stream latched to the first source (no SDP address):
    the restarted receiver, built from the manifest, refuses a stranger who is first."""
    manifest = RecordingManifest(recording_id="r1", started_at=datetime.now(UTC),
                                 metadata=RecordingMetadata(source="sip", session_key="k"))
    stream = StreamManifest(stream_id="m0", channel=0, port=20000)
    manifest.streams["m0"] = stream
    stream.set_expectation(expected_from_sdp("0.0.0.0", 9), None)
    first = Harness(tmp_path / "a.seg", expected=stream.expectation()[0])
    first.receiver.on_latch = stream.set_latched  # what Capture does (plus save)
    first.feed(("127.0.0.1", 4000), 1)
    manifest.save(tmp_path)

    expected, latched = RecordingManifest.load(tmp_path).streams["m0"].expectation()
    assert latched == Endpoint("127.0.0.1", 4000)
    second = Harness(tmp_path / "b.seg", expected=expected, latched=latched)
    second.feed(("127.0.0.2", 4000), 2)
    second.feed(("127.0.0.1", 4000), 3)
    assert second.stored() == [3]
    assert second.latches == []


# ---------------------------------------------------------------- real sockets


async def _send_with_a_stranger(h: Harness, real: socket.socket, port: int,
                                garbage: bool = False) -> None:
    """20 RTP packets from ``real`` (bound here to 127.0.0.1) interleaved with 20 from a
    stranger on 127.0.0.2 (and non-RTP from ``real`` if ``garbage``); waits until read."""
    real.bind(("127.0.0.1", 0))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.bind(("127.0.0.2", 0))
        for seq in range(20):
            stranger.sendto(rtp(1000 + seq), ("127.0.0.1", port))
            real.sendto(rtp(seq), ("127.0.0.1", port))
            if garbage:
                real.sendto(b"\x00not rtp", ("127.0.0.1", port))
        for _ in range(100):
            if h.receiver.packets + sum(h.receiver.dropped.values()) >= 40:
                break
            await asyncio.sleep(0.01)


async def test_receiver_on_a_real_socket_drops_a_stranger_on_127_0_0_2(tmp_path: Path) -> None:
    h = Harness(tmp_path / "s.seg", expected=expected_from_sdp("127.0.0.1", None))
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: h.receiver,
                                                       local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as real:
        await _send_with_a_stranger(h, real, port)
    transport.close()
    assert h.stored() == list(range(20))
    assert h.receiver.dropped["wrong_address"] == 20


async def test_attached_receiver_reads_its_socket_and_drops_a_stranger(tmp_path: Path) -> None:
    """The service's path: a reader callback on the raw socket (no transport); closing
    it stops reading and closes the socket."""
    h = Harness(tmp_path / "s.seg", expected=expected_from_sdp("127.0.0.1", None))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    h.receiver.attach(sock)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as real:
        await _send_with_a_stranger(h, real, port, garbage=True)
        h.receiver.close()
        assert sock.fileno() == -1
        real.sendto(rtp(99), ("127.0.0.1", port))  # nobody reads it any more
        await asyncio.sleep(0.05)
    assert h.stored() == list(range(20))
    assert h.receiver.dropped["wrong_address"] == 20
    assert h.receiver.invalid == 20
