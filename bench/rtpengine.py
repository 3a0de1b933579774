"""rtpengine as a reference recorder: bencode, its ng control protocol, the daemon.

Why: the capacity benchmark compares callrec's capture path with a C media recorder
on the same traffic in the same run. rtpengine (Debian's `rtpengine-daemon`) runs in
userspace only (no kernel table), records raw RTP to pcap, and drops the media instead
of forwarding it (`media echo: blackhole`), so its CPU is the cost of receiving and
recording alone.

The ng protocol is a bencoded dictionary in a UDP datagram, prefixed with a cookie
and a space; the reply carries the same cookie.
"""

from __future__ import annotations

import itertools
import os
import resource
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
PACKAGE = "rtpengine-daemon"  # never the `rtpengine` metapackage: it pulls a kernel module
BINARY = "rtpengine"

Bencodable = int | bytes | str | Sequence["Bencodable"] | Mapping[str, "Bencodable"]
Decoded = int | bytes | list["Decoded"] | dict[str, "Decoded"]


# --------------------------------------------------------------------------- bencode


def bencode(value: Bencodable) -> bytes:
    """Encode ints, strings (UTF-8), bytes, lists and dicts (keys sorted, as required)."""
    if isinstance(value, bool):
        raise TypeError("bencode has no booleans")
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, Mapping):
        items = sorted((k.encode(), v) for k, v in value.items())
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in items) + b"e"
    if isinstance(value, Sequence):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    raise TypeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes) -> Decoded:
    """Decode one bencoded value; dict keys become str, strings stay bytes."""
    value, end = _decode_at(data, 0)
    if end != len(data):
        raise ValueError(f"trailing data at {end}")
    return value


def _decode_at(data: bytes, i: int) -> tuple[Decoded, int]:
    if i >= len(data):
        raise ValueError("truncated")
    head = data[i : i + 1]
    if head == b"i":
        end = data.index(b"e", i)
        return int(data[i + 1 : end]), end + 1
    if head == b"l":
        items: list[Decoded] = []
        i += 1
        while data[i : i + 1] != b"e":
            item, i = _decode_at(data, i)
            items.append(item)
        return items, i + 1
    if head == b"d":
        result: dict[str, Decoded] = {}
        i += 1
        while data[i : i + 1] != b"e":
            key, i = _decode_at(data, i)
            if not isinstance(key, bytes):
                raise ValueError("dict key is not a string")
            result[key.decode()], i = _decode_at(data, i)
        return result, i + 1
    if head.isdigit():
        colon = data.index(b":", i)
        length = int(data[i:colon])
        start = colon + 1
        if start + length > len(data):
            raise ValueError("truncated string")
        return data[start : start + length], start + length
    raise ValueError(f"unexpected byte {head!r} at {i}")


# --------------------------------------------------------------------------- SDP


def sdp_audio(port: int, session: int) -> str:
    """A minimal one-stream PCMU/20 ms SDP from 127.0.0.1:`port`."""
    return ("v=0\r\n"
            f"o=- {session} 1 IN IP4 {HOST}\r\n"
            "s=-\r\n"
            f"c=IN IP4 {HOST}\r\n"
            "t=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\n"
            "a=rtpmap:0 PCMU/8000\r\n"
            "a=ptime:20\r\n"
            "a=sendrecv\r\n")


def sdp_port(sdp: bytes) -> int:
    """The audio port of the first m= line (where rtpengine wants the media)."""
    for line in sdp.decode().splitlines():
        if line.startswith("m=audio "):
            return int(line.split()[1])
    raise ValueError("no m=audio line in the SDP")


# --------------------------------------------------------------------------- ng client


class NgError(RuntimeError):
    """rtpengine answered with `result: error` (or not at all)."""


@dataclass
class NgClient:
    """Blocking ng client (UDP, one request at a time: set-up is not what we measure)."""

    port: int
    timeout: float = 5.0
    _sock: socket.socket = field(init=False)
    _cookies: itertools.count[int] = field(default_factory=itertools.count, init=False)

    def __post_init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.settimeout(self.timeout)

    def request(self, command: Mapping[str, Bencodable], retries: int = 3) -> dict[str, Decoded]:
        cookie = f"{os.getpid()}_{next(self._cookies)}".encode()
        message = cookie + b" " + bencode(command)
        for _ in range(retries):
            self._sock.sendto(message, (HOST, self.port))
            try:
                while True:
                    data = self._sock.recv(65536)
                    got, _, body = data.partition(b" ")
                    if got == cookie:
                        break
            except TimeoutError:
                continue
            reply = bdecode(body)
            if not isinstance(reply, dict):
                raise NgError(f"reply is not a dict: {reply!r}")
            if reply.get("result") not in (b"ok", b"pong"):
                raise NgError(f"{command.get('command')}: {reply!r}")
            return reply
        raise NgError(f"no reply to {command.get('command')} on port {self.port}")

    def close(self) -> None:
        self._sock.close()


def open_recorded_call(ng: NgClient, call_id: str, dummy_port: int) -> tuple[int, int]:
    """offer + answer one two-party call with recording on and forwarding off.

    Returns rtpengine's (caller-facing, callee-facing) ports: where the caller's
    stream (channel 0) and the callee's (channel 1) must be sent."""
    common: dict[str, Bencodable] = {
        "call-id": call_id, "from-tag": "a", "record call": "yes",
        "media echo": "blackhole",  # receive and record, forward nothing
        "flags": ["trust-address"], "replace": ["origin"],
    }
    offer = ng.request({**common, "command": "offer", "sdp": sdp_audio(dummy_port, 1)})
    answer = ng.request({**common, "command": "answer", "to-tag": "b",
                         "sdp": sdp_audio(dummy_port + 2, 2)})
    offer_sdp, answer_sdp = offer.get("sdp"), answer.get("sdp")
    if not isinstance(offer_sdp, bytes) or not isinstance(answer_sdp, bytes):
        raise NgError("offer/answer reply without sdp")
    # The offer's SDP goes to the callee: the port the callee sends to; the answer's
    # SDP goes to the caller.
    return sdp_port(answer_sdp), sdp_port(offer_sdp)


# --------------------------------------------------------------------------- the daemon


def ensure_installed() -> str | None:
    """Install the daemon if it is missing; return why it cannot run, or None."""
    if shutil.which(BINARY):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return f"{BINARY} missing and cannot install {PACKAGE} (not root or no apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", PACKAGE],
                            capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0 or not shutil.which(BINARY):
        return f"apt-get install {PACKAGE} failed: {result.stderr.strip()[-200:]}"
    return None


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _no_core_dump() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


@dataclass
class Daemon:
    """One rtpengine process in the foreground, userspace only, recording to pcap."""

    port_min: int
    port_max: int
    threads: int = 2
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rtpengine-")))
    ng_port: int = field(default_factory=free_udp_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def recording_dir(self) -> Path:
        return self.workdir / "rec"

    def start(self, timeout: float = 10.0) -> NgClient:
        self.recording_dir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "rtpengine.conf"
        conf.write_text("[rtpengine]\n")  # not the system's config
        args = [
            BINARY, f"--config-file={conf}", "--foreground", "--log-stderr",
            "--log-level=4", "--table=-1", f"--interface={HOST}",
            f"--listen-ng={HOST}:{self.ng_port}",
            f"--port-min={self.port_min}", f"--port-max={self.port_max}",
            "--recording-method=pcap", f"--recording-dir={self.recording_dir}",
            f"--num-threads={self.threads}", "--delete-delay=0",
            f"--pidfile={self.workdir / 'pid'}",
        ]
        log = (self.workdir / "rtpengine.log").open("wb")
        # No core file in the caller's directory if the daemon dies on its way out.
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                        preexec_fn=_no_core_dump)
        ng = NgClient(self.ng_port, timeout=0.5)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise NgError(f"rtpengine exited: {self.log_tail()}")
            try:
                ng.request({"command": "ping"}, retries=1)
                break
            except NgError:
                if time.monotonic() > deadline:
                    raise
        ng.timeout = 5.0
        ng._sock.settimeout(5.0)
        return ng

    def log_tail(self) -> str:
        path = self.workdir / "rtpengine.log"
        return path.read_text(errors="replace")[-500:] if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def pcap_packets(path: Path) -> int:
    """Records in one pcap file (classic libpcap format, either byte order)."""
    data = path.read_bytes()
    if len(data) < 24:
        return 0
    order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    header = struct.Struct(order + "IIII")
    count, i = 0, 24
    while i + 16 <= len(data):
        incl_len = header.unpack_from(data, i)[2]
        i += 16 + incl_len
        if i <= len(data):
            count += 1
    return count


def recorded_packets(recording_dir: Path) -> tuple[int, int]:
    """(packets, bytes) in every pcap file under the recording directory."""
    files = list(recording_dir.rglob("*.pcap"))
    return sum(pcap_packets(p) for p in files), sum(p.stat().st_size for p in files)
