"""SIP admission on a real node (issue 7, findings 5 and 6), attacked from other
loopback addresses: 127.0.0.1 is the PBX, 127.0.0.2 a second allow-listed PBX (the
flooding one), 127.0.0.3 and up are strangers. Every attack is followed by a real
call that must still be recorded, checked by its tones.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from callrec.audio import decode_file, dominant_frequency
from tests.support import sipp
from tests.support.node import Node

pytestmark = pytest.mark.e2e

RATE = 16000
PBX, FLOODER = "127.0.0.1", "127.0.0.2"
MAX_CHANNELS = 10  # so the flood legs' cap (half) is 5, and a flood without it takes all
MEDIA_TIMEOUT = 4.0
_calls = itertools.count(1)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    n = Node(tmp_path_factory.mktemp("sipsec"), extra_args=[
        "--max-channels", str(MAX_CHANNELS), "--sip-allow", f"{PBX}/32",
        "--sip-allow", f"{FLOODER}/32", "--media-timeout", str(MEDIA_TIMEOUT),
        "--sip-tcp-per-source", "64", "--sip-tcp-max", "1024", "--record-all",
    ]).start()
    yield n
    n.stop()


# ---------------------------------------------------------------- a raw SIP client


class SipClient:
    """A PBX (or attacker) speaking SIP over UDP from a chosen loopback address."""

    def __init__(self, source: str, node: Node) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))
        self.sock.settimeout(0.2)
        self.source, self.port = self.sock.getsockname()
        self.target = ("127.0.0.1", node.sip_port)

    def close(self) -> None:
        self.sock.close()

    def invite(self, refci: str, side: str = "near", method: str = "INVITE") -> str:
        """Send a CUCM BiB leg INVITE (delayed offer); its Call-ID."""
        n = next(_calls)
        call_id = f"flood-{n}-{time.monotonic_ns()}@{self.source}"
        params = (f"x-{side}end;x-refci={refci};x-nearendclusterid=StandAloneCluster;"
                  f"x-nearenddevice=SEP1;x-nearendaddr=1001;x-farendrefci={refci}9;x-farendclusterid=StandAloneCluster;"
                  "x-farenddevice=SEP2;x-farendaddr=2002")
        self.send(
            f"{method} sip:9999@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.source}:{self.port};branch=z9hG4bK{n}x{call_id[-6:]};rport\r\n"
            f"From: <sip:1001@{self.source};{params}>;tag=t{n}\r\n"
            "To: <sip:9999@127.0.0.1>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 101 {method}\r\nMax-Forwards: 70\r\n"
            f"Contact: <sip:1001@{self.source}:{self.port}>\r\n"
            "User-Agent: Cisco-CUCM14.0\r\nContent-Length: 0\r\n\r\n")
        return call_id

    def send(self, text: str) -> None:
        self.sock.sendto(text.encode(), self.target)

    def collect(self, seconds: float) -> list[dict[str, str]]:
        """Final responses (and requests) received for a while, as header dicts."""
        out: list[dict[str, str]] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            text = data.decode(errors="replace")
            head = text.split("\r\n\r\n", 1)[0].split("\r\n")
            message = {"start": head[0]}
            for line in head[1:]:
                name, _, value = line.partition(":")
                message.setdefault(name.strip().lower(), value.strip())
            out.append(message)
        return out

    def ack_200(self, response: dict[str, str]) -> None:
        """ACK a 200 with an SDP answer (the leg now waits for RTP that never comes)."""
        sdp = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
               "m=audio 9 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendonly\r\n")
        contact = re.search(r"<([^>]+)>", response["contact"])
        assert contact is not None
        self.send(
            f"ACK {contact.group(1)} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.source}:{self.port};branch=z9hG4bKack{next(_calls)};rport\r\n"
            f"From: {response['from']}\r\nTo: {response['to']}\r\n"
            f"Call-ID: {response['call-id']}\r\nCSeq: 101 ACK\r\nMax-Forwards: 70\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}")


def status(message: dict[str, str]) -> int | None:
    parts = message["start"].split()
    return int(parts[1]) if parts[0] == "SIP/2.0" else None


def finals(messages: list[dict[str, str]]) -> dict[str, int]:
    """Call-ID -> final status."""
    out: dict[str, int] = {}
    for message in messages:
        code = status(message)
        if code is not None and code >= 200 and "INVITE" in message.get("cseq", ""):
            out[message["call-id"]] = code
    return out


def refusals(node: Node) -> dict[str, float]:
    text = httpx.get(f"{node.base_url}/metrics", timeout=5.0).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r'callrec_signaling_sip_refused_total\{.*reason="([a-z_]+)".*\} (\S+)', line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def recording_of(node: Node, refci: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for recording in node.wait_recordings(0):
            if recording["metadata"].get("refci") == refci:
                return recording
        if time.monotonic() > deadline:
            raise AssertionError(f"no recording of refci {refci}")
        time.sleep(0.3)


def recorded_tones(node: Node, refci: str, tmp_path: Path) -> tuple[float, float]:
    recording = recording_of(node, refci)
    with node.client() as client:
        response = client.get(f"/api/recordings/{recording['recording_id']}/audio")
    assert response.status_code == 200
    path = tmp_path / "call.opus"
    path.write_bytes(response.content)
    audio, _ = decode_file(path, rate=RATE)
    return dominant_frequency(audio[0], RATE), dominant_frequency(audio[1], RATE)


def real_call(node: Node, tmp_path: Path, *, transport: sipp.Transport = "u1",
              refci: str = "50331649") -> None:
    """A CUCM call from the PBX (127.0.0.1), recorded with both tones."""
    result = sipp.run_cucm_call(PBX, node.sip_port, near="1001", far="2002", refci=refci,
                                near_tone_hz=440.0, far_tone_hz=1004.0, seconds=2.0,
                                transport=transport)
    assert result.ok, result.describe()
    near, far = recorded_tones(node, refci, tmp_path)
    assert abs(near - 440.0) < 15 and abs(far - 1004.0) < 15, (near, far)


# ---------------------------------------------------------------- tests


def test_invite_flood_from_one_source_does_not_stop_another_sources_call(
    node: Node, tmp_path: Path
) -> None:
    """Finding 5: 100 INVITE+ACK, no RTP, no BYE, from one allow-listed source."""
    flooder = SipClient(FLOODER, node)
    try:
        for n in range(100):
            flooder.invite(refci=f"7{n:06d}")
        answers: dict[str, int] = {}
        messages = flooder.collect(3.0)
        answers.update(finals(messages))
        for message in messages:
            if status(message) == 200 and "INVITE" in message.get("cseq", ""):
                flooder.ack_200(message)
        answered = sorted(c for c, code in answers.items() if code == 200)
        assert len(answers) == 100, f"{len(answers)} answered"
        # Half the licences at most go to legs still waiting for media; the rest 503.
        assert len(answered) == MAX_CHANNELS // 2
        assert set(answers.values()) == {200, 503}
        assert node.metric("callrec_signaling_recordings_awaiting_media") == MAX_CHANNELS // 2

        # Meanwhile the other PBX's real call is recorded (not 486).
        real_call(node, tmp_path)
        assert refusals(node).get("pending_media", 0) >= 95

        # The media timeout ends the flood legs: BYE to the flooder, licences back.
        byes = [m for m in flooder.collect(MEDIA_TIMEOUT + 8.0) if m["start"].startswith("BYE")]
        assert sorted(m["call-id"] for m in byes) == answered
        wait_for(lambda: node.metric("callrec_signaling_active_recordings") == 0, 10,
                 "the flood's recordings to end")
        assert node.metric("callrec_signaling_recordings_awaiting_media") == 0
    finally:
        flooder.close()


def test_flood_from_a_source_not_allowed_gets_403_then_silence(node: Node) -> None:
    before = refusals(node)
    stranger = SipClient("127.0.0.3", node)
    try:
        for n in range(100):
            stranger.invite(refci=f"8{n:06d}")
        stranger.invite(refci="0", method="OPTIONS")
        got = [status(m) for m in stranger.collect(2.0)]
    finally:
        stranger.close()
    # A few clear refusals (a PBX missing from --sip-allow sees why), then silence:
    # no reflection, and nothing reached the UAS (no 100 Trying, no 200).
    assert got and set(got) == {403}, got
    assert len(got) <= 11
    after = refusals(node)
    refused = after.get("not_allowed", 0) - before.get("not_allowed", 0)
    dropped = after.get("not_allowed_drop", 0) - before.get("not_allowed_drop", 0)
    assert refused == len(got) and refused + dropped == 101
    # OPTIONS from another stranger (with its own budget) is refused too.
    other = SipClient("127.0.0.4", node)
    try:
        other.invite(refci="0", method="OPTIONS")
        assert [status(m) for m in other.collect(1.0)] == [403]
    finally:
        other.close()
    assert node.can_record()
    # Logged with its source, once (a minute), with the count so far.
    lines = [line for line in node.log().splitlines()
             if "sip_refused" in line and "127.0.0.3" in line and "not_allowed" in line]
    assert len(lines) == 2, lines  # one per reason: answered, then dropped


def test_second_leg_from_another_source_cannot_join_a_call(node: Node, tmp_path: Path) -> None:
    refci = "67108865"
    call = sipp.start_cucm_call(PBX, node.sip_port, near="1001", far="2002", refci=refci,
                                near_tone_hz=440.0, far_tone_hz=1004.0, seconds=3.0)
    intruder = SipClient(FLOODER, node)  # allow-listed, but not this call's PBX
    try:
        time.sleep(1.0)
        call_id = intruder.invite(refci=refci, side="far")
        answers = finals(intruder.collect(1.5))
    finally:
        intruder.close()
        result = call.wait()
    assert answers == {call_id: 403}
    assert result.ok, result.describe()
    assert refusals(node).get("leg_source", 0) >= 1
    recording = recording_of(node, refci)
    assert len(recording["metadata"]["sip_call_ids"]) == 2  # only the PBX's own legs
    near, far = recorded_tones(node, refci, tmp_path)
    assert abs(near - 440.0) < 15 and abs(far - 1004.0) < 15


@contextlib.contextmanager
def idle_connections(node: Node, sources: list[tuple[str, int]]) -> Iterator[int]:
    """Open idle TCP connections (source, count); yields how many the kernel accepted."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = sum(count for _, count in sources) + 512
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    opened: list[socket.socket] = []
    try:
        for source, count in sources:
            for _ in range(count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind((source, 0))
                sock.settimeout(5.0)
                try:
                    sock.connect(("127.0.0.1", node.sip_port))
                except OSError:
                    sock.close()
                    continue
                opened.append(sock)
        yield len(opened)
    finally:
        for sock in opened:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_idle_tcp_connections_do_not_lock_out_a_tcp_pbx(node: Node, tmp_path: Path) -> None:
    """Finding 6: 1,030 idle connections, from an allow-listed source and from
    strangers; the PBX's SIP-over-TCP call is still recorded."""
    before = refusals(node)
    sources = [(FLOODER, 600), *[(f"127.0.0.{n}", 62) for n in range(3, 10)]]
    assert sum(count for _, count in sources) == 1034
    with idle_connections(node, sources) as opened:
        assert opened >= 1030
        wait_for(lambda: node.metric("callrec_signaling_sip_tcp_connections") > 0, 10,
                 "connections to be counted")
        held = node.metric("callrec_signaling_sip_tcp_connections")
        # 64 for the allow-listed flooder, a quarter of 1024 for all strangers together.
        assert held <= 64 + 256, held
        after = refusals(node)
        capped = sum(after.get(r, 0) - before.get(r, 0)
                     for r in ("tcp_source_cap", "tcp_global_cap"))
        assert capped >= 1034 - 64 - 256
        real_call(node, tmp_path, transport="t1", refci="83886081")


def test_media_timeout_ends_a_call_whose_rtp_stopped_and_keeps_its_audio(
    node: Node, tmp_path: Path
) -> None:
    """A PBX leg sends 2 s of tone, then nothing and no BYE (the PBX died): the media
    timeout ends it with a BYE and the 2 s recorded are finalized."""
    from tests.support.rtp import pcmu_tone

    refci = "100663297"
    run = sipp.SippRun("cucm_leg.xml", (PBX, node.sip_port),
                       keys={"recorder": "9999", "side": "nearend", "near": "1001",
                             "far": "2002", "refci": refci, "farrefci": "0"},
                       duration_ms=60_000, timeout_s=90, tone=pcmu_tone(440.0, 2.0))
    started = time.monotonic()
    with run:
        run.start()
        recording = recording_of(node, refci, timeout=MEDIA_TIMEOUT + 30)
        ended_after = time.monotonic() - started
        run.kill()
        received = [e for e in run.entries() if e.direction == "received"]
    assert ended_after < MEDIA_TIMEOUT + 25, ended_after  # not the 60 s the leg would last
    # Up to 2 s of tone, the timeout, then up to a second each for capture's health
    # report and the watch that reads it (8 s at worst on an idle machine; one CI run
    # took 8.013): a margin for a loaded machine, far short of the leg's 60 s.
    assert 1.5 <= recording["duration_ms"] / 1000 <= 2.0 + MEDIA_TIMEOUT + 2 + 4, recording
    with node.client() as client:
        response = client.get(f"/api/recordings/{recording['recording_id']}/audio")
    path = tmp_path / "cut.opus"
    path.write_bytes(response.content)
    audio, _ = decode_file(path, rate=RATE)
    assert abs(dominant_frequency(audio[0], RATE) - 440.0) < 15
    assert any(e.start_line.startswith("BYE ") for e in received), "no BYE from the recorder"


def test_a_tcp_peer_that_never_reads_its_answers_is_dropped_and_calls_go_on(
    node: Node, tmp_path: Path
) -> None:
    """An allow-listed source (a broken PBX, or a host on its network) sends OPTIONS
    over TCP as fast as it can and never reads the answers, its receive window shut.
    The answers queue in the node only up to TCP_WRITE_LIMIT (1 MiB): then the
    connection is dropped, and the PBX's TCP call is still recorded."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
    sock.bind((FLOODER, 0))
    sock.connect(("127.0.0.1", node.sip_port))
    sock.setblocking(False)
    source, port = sock.getsockname()
    sent, dropped = 0, False
    deadline = time.monotonic() + 60
    try:
        while not dropped and time.monotonic() < deadline:
            request = (f"OPTIONS sip:9999@127.0.0.1 SIP/2.0\r\n"
                       f"Via: SIP/2.0/TCP {source}:{port};branch=z9hG4bKnr{sent}\r\n"
                       f"From: <sip:ping@{source}>;tag=nr{sent}\r\nTo: <sip:9999@127.0.0.1>\r\n"
                       f"Call-ID: never-reads-{sent}@{source}\r\nCSeq: 1 OPTIONS\r\n"
                       "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
            try:
                sock.sendall(request)
                sent += 1
            except (BlockingIOError, InterruptedError):
                time.sleep(0.01)  # the node reads as fast as it answers
            except (BrokenPipeError, ConnectionResetError):
                dropped = True
    finally:
        sock.close()
    assert dropped, f"still connected after {sent} requests"

    def dropped_lines() -> list[str]:
        return [line for line in node.log().splitlines()
                if "tcp_write_backlog_dropped" in line and FLOODER in line]

    # Dropped for its queue of answers (past the limit, not before), no other reason.
    wait_for(dropped_lines, 10, "the drop to be logged")
    queued = re.search(r'"queued":\s*(\d+)', dropped_lines()[-1])
    assert queued is not None and 1 << 20 < int(queued.group(1)) < 2 << 20, dropped_lines()
    real_call(node, tmp_path, transport="t1", refci="117440513")
