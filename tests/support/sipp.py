"""Run SIPp (the PBX / SRC side) against callrec in end-to-end tests.

Scenarios live in ``tests/sipp/``:

* ``cucm_leg.xml`` - one Cisco CUCM built-in-bridge recording leg (delayed
  offer: INVITE without SDP, our 200 OK carries the offer, SIPp's ACK the
  answer ``a=sendonly`` PCMU+101), then ``tone.pcmu`` once, ``-d`` ms, BYE.
* ``cucm_leg_reinvite.xml`` - the same plus hold (re-INVITE w/o SDP, ACK answer
  ``a=inactive``, RTP paused 1 s) and resume (``a=sendonly``, RTP resumed).
* ``siprec.xml`` - RFC 7866 SIPREC INVITE (multipart SDP with 2 m-lines +
  RFC 7865 metadata); SIPp streams label 1 (callee), :class:`RtpSender` label 2.
* ``invite_expect.xml`` - CUCM-style INVITE that must be rejected (any
  4xx/5xx/6xx; the code is read from the message log), ACKed on its branch.
* ``options.xml`` / ``options_503.xml`` - OPTIONS expecting 200 / 503.

SIPp 3.6.1 facts verified while writing this (Debian ``sip-tester``):

* ``-key NAME VALUE`` is used as ``[NAME]`` in message text (NOT ``[key-NAME]``:
  that aborts with "Unsupported keyword"). Keys are not expanded inside XML
  attributes, so the rtp_stream file is fixed (``tone.pcmu``, relative to the
  working directory): every :class:`SippRun` gets its own temp working dir.
* ``<pause/>`` without ``milliseconds`` pauses for ``-d`` ms - that is how the
  call length is set per process.
* ``<exec rtp_stream="tone.pcmu,1,0"/>`` needs neither ``-rtp_echo`` nor
  ``rtp_stream="pause"/"resume"``; loops=1 plays the file exactly once (a 2 s
  file gives 100 packets), loops=-1 loops until the call ends. It takes the
  destination from the first ``m=audio`` (+ ``c=``) of the last *received*
  message whose ``Content-Type`` is ``application/sdp`` - this works for an SDP
  in a 200 OK (delayed offer) and for the re-offer in a re-INVITE's 200 OK.
  Packets come from the ``-mp`` port, 160 bytes / 20 ms, one SSRC, continuous
  seq. ``rtp_stream="pause"`` / ``"resume"`` work (used for hold).
* SIPp binds ``-mp`` and ``-mp``+2 (UDP) even without ``-rtp_echo``, and a UDP
  remote-control socket on ``0.0.0.0:8888`` (next free if taken) unless
  ``-ci``/``-cp`` are given - we always pass ``-ci 127.0.0.1 -cp <free>``.
  Without ``-mp`` it uses 6000/6002, so even OPTIONS runs get their own ``-mp``.
* ``[media_port+4]`` works in SDP (siprec.xml offers ``-mp``+4 for label 2,
  the port our Python sender sends from).
* ``Content-Length: [len]`` is rendered space-padded (``Content-Length:   241``).
* ``[next_url]`` (with ``rrs="true"`` on the 200) = the recorder's Contact URI:
  used as Request-URI of ACK/BYE/re-INVITE, so the 200 OK MUST have a Contact
  (without one SIPp writes a garbage Request-URI and the call fails, exit 255).
  SIPp still sends everything to the command-line remote address.
* The SDP answer's ``Content-Type`` must be exactly ``application/sdp``:
  ``application/SDP``, ``Application/sdp`` or ``application/sdp;charset=...``
  make SIPp silently send NO RTP while the call still "succeeds" (exit 0) -
  so e2e tests must check the recording's content, not only the exit code.
* A re-offer in a re-INVITE's 200 OK with a NEW port is followed (RTP moves).
* ``[branch-N]`` = the branch of the message N scenario elements back; a
  non-2xx ACK uses it to reuse the INVITE branch.
* The ``-trace_msg`` log (``-message_file``) is flushed per message, so the
  200 OK's SDP can be read while the call runs.
* SIPp reads/caches the rtp_stream file at start-up: if ``tone.pcmu`` is
  missing it exits 1 at once ("Cannot read/cache rtpstream file") - so
  :class:`SippRun` always writes one (1 kHz, 1 s) when the scenario needs it.
* Exit codes: 0 all calls OK, 1 some call failed (unexpected message, e.g. 503
  instead of 200; missing rtp_stream file), 97 exit on internal command, 99 no
  call processed, 255 fatal error - including the global ``-timeout`` since we
  pass ``-timeout_error`` (e.g. no answer at all: UDP retransmits until then),
  254 cannot bind a socket (see ``EXIT_*``).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from .ports import SIPP_PORTS, free_block
from .rtp import Impairment, RtpSender, pcmu_tone, pcmu_tone_file

LOCALHOST = "127.0.0.1"
SIPP_DIR = Path(__file__).resolve().parent.parent / "sipp"
SIPP_BIN = shutil.which("sipp") or "/usr/bin/sipp"
TONE_FILE = "tone.pcmu"

EXIT_OK = 0
EXIT_CALL_FAILED = 1
EXIT_INTERNAL_CMD = 97
EXIT_NO_CALLS = 99
EXIT_FATAL = 255
EXIT_BIND_FAILED = 254

Transport = Literal["u1", "t1"]
ServerAddr = tuple[str, int] | str  # (host, port) or "host:port"

# --------------------------------------------------------------------------- ports

def free_port_block(count: int, *, tcp: bool = False, even: bool = True) -> int:
    """First port of ``count`` consecutive ports free on 127.0.0.1 (UDP, and TCP if asked)."""
    return free_block(count, band=SIPP_PORTS, tcp=tcp, even=even)


def free_udp_port() -> int:
    """A free UDP port on 127.0.0.1 (also free for TCP, so it can be a SIP -p)."""
    return free_port_block(1, tcp=True, even=False)


def free_port_pair() -> int:
    """An even port ``p`` with ``p``..``p+4`` free: for ``-mp`` (SIPp binds p and p+2;
    siprec.xml offers p+4 as the second stream's source)."""
    return free_port_block(5)


# --------------------------------------------------------------------------- message log parsing

_ENTRY_SEP = re.compile(r"^-{10,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\s*$", re.M)
_ENTRY_HEAD = re.compile(r"^(UDP|TCP|TLS|SCTP) message (sent|received)\b[^\n]*\n", re.M)


@dataclass
class SdpMedia:
    media: str  # "audio"
    host: str  # from the media-level c= or the session-level c=
    port: int
    payload_types: list[int]
    attributes: list[str]  # "a=" lines without the prefix, e.g. "label:1", "recvonly"

    @property
    def direction(self) -> str:
        for a in self.attributes:
            if a in ("sendrecv", "sendonly", "recvonly", "inactive"):
                return a
        return "sendrecv"

    @property
    def label(self) -> str | None:
        for a in self.attributes:
            if a.startswith("label:"):
                return a[6:]
        return None


def parse_sdp(text: str) -> list[SdpMedia]:
    """The m= sections of an SDP body (only what the tests need)."""
    session_host = ""
    media: list[SdpMedia] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("c=") and len(line.split()) >= 3:
            host = line.split()[2].split("/")[0]
            if media:
                media[-1].host = host
            else:
                session_host = host
        elif line.startswith("m="):
            parts = line[2:].split()
            media.append(
                SdpMedia(
                    parts[0],
                    session_host,
                    int(parts[1]),
                    [int(p) for p in parts[3:] if p.isdigit()],
                    [],
                )
            )
        elif line.startswith("a=") and media:
            media[-1].attributes.append(line[2:])
    return media


@dataclass
class SipLogEntry:
    """One message of SIPp's ``-trace_msg`` log."""

    time: str
    transport: str  # UDP / TCP
    direction: Literal["sent", "received"]
    text: str  # the SIP message, "\n" line ends

    @property
    def start_line(self) -> str:
        return self.text.split("\n", 1)[0].strip()

    @property
    def is_response(self) -> bool:
        return self.start_line.startswith("SIP/2.0 ")

    @property
    def status_code(self) -> int | None:
        return int(self.start_line.split()[1]) if self.is_response else None

    @property
    def method(self) -> str:
        """Request method, or the CSeq method of a response."""
        if not self.is_response:
            return self.start_line.split()[0]
        cseq = self.header("CSeq") or ""
        return cseq.split()[-1] if cseq else ""

    @property
    def head(self) -> str:
        return re.split(r"\n[ \t]*\n", self.text, maxsplit=1)[0]

    @property
    def body(self) -> str:
        parts = re.split(r"\n[ \t]*\n", self.text, maxsplit=1)
        return parts[1] if len(parts) > 1 else ""

    def header(self, name: str) -> str | None:
        compact = {
            "content-type": "c",
            "call-id": "i",
            "from": "f",
            "to": "t",
            "via": "v",
            "contact": "m",
            "content-length": "l",
        }
        names = {name.lower(), compact.get(name.lower(), name.lower())}
        for line in self.head.split("\n")[1:]:
            k, sep, v = line.partition(":")
            if sep and k.strip().lower() in names:
                return v.strip()
        return None

    @property
    def sdp(self) -> list[SdpMedia]:
        """m= sections if the Content-Type is application/sdp, else []."""
        ctype = (self.header("Content-Type") or "").split(";")[0].strip().lower()
        return parse_sdp(self.body) if ctype == "application/sdp" else []


def parse_messages_log(text: str, *, complete_only: bool = False) -> list[SipLogEntry]:
    """Parse a SIPp message log. With ``complete_only`` the last entry is dropped
    (it may still be being written while SIPp runs)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    seps = list(_ENTRY_SEP.finditer(text))
    out: list[SipLogEntry] = []
    for i, m in enumerate(seps):
        if complete_only and i == len(seps) - 1:
            break
        chunk = text[m.end() : seps[i + 1].start() if i + 1 < len(seps) else len(text)]
        h = _ENTRY_HEAD.search(chunk)
        if not h:
            continue
        msg = chunk[h.end() :].lstrip("\n")
        out.append(SipLogEntry(m.group(1), h.group(1), h.group(2), msg))  # type: ignore[arg-type]
    return out


class MessageLogTail:
    """The entries a running SIPp has added to its message log since the last call:
    reads only the new bytes, keeping a message still being written for next time
    (a long run's log is too big to parse whole every second)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.pending = ""

    def new_entries(self) -> list[SipLogEntry]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        text = self.pending + data.decode(errors="replace")
        seps = list(_ENTRY_SEP.finditer(text))
        if not seps:
            self.pending = text
            return []
        self.pending = text[seps[-1].start():]
        return parse_messages_log(text[:seps[-1].start()])


# --------------------------------------------------------------------------- SippRun


@dataclass
class SippResult:
    scenario: str
    exit_code: int
    messages: str  # -trace_msg log text
    errors: str  # -trace_err log text ("" if none)
    workdir: Path

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK

    def entries(self) -> list[SipLogEntry]:
        return parse_messages_log(self.messages)

    def call_id(self) -> str | None:
        for e in self.entries():
            if e.direction == "sent":
                return e.header("Call-ID")
        return None

    def final_response_code(self, method: str = "INVITE") -> int | None:
        """Status of the first final (>=200) response received for ``method``."""
        for e in self.entries():
            if (
                e.direction == "received"
                and e.is_response
                and e.method == method
                and (e.status_code or 0) >= 200
            ):
                return e.status_code
        return None

    def describe(self) -> str:
        """For assertion messages."""
        return (
            f"{self.scenario}: exit {self.exit_code}\n--- errors ---\n{self.errors[-3000:]}"
            f"\n--- messages ---\n{self.messages[-6000:]}"
        )


def _server_addr(server: ServerAddr) -> tuple[str, int]:
    if isinstance(server, str):
        host, _, port = server.rpartition(":")
        return host, int(port)
    return server[0], int(server[1])


class SippRun:
    """One SIPp process (foreground, ``-m 1`` by default) in its own working dir.

    ``tone`` (raw PCMU bytes) is written to ``<workdir>/tone.pcmu`` for the
    scenario's ``rtp_stream`` (default: 1 s of 1 kHz). Logs: ``<workdir>/messages.log``
    / ``errors.log``,
    SIPp's screen output in ``<workdir>/screen.txt``. The working dir is a fresh
    temp dir (removed by :meth:`close` unless ``keep=True``) or ``workdir``.
    """

    def __init__(
        self,
        scenario: str | Path,
        server: ServerAddr,
        *,
        keys: Mapping[str, object] | None = None,
        transport: Transport = "u1",
        local_port: int | None = None,
        media_port: int | None = None,
        duration_ms: int = 0,
        calls: int = 1,
        timeout_s: float = 30,
        recv_timeout_ms: int | None = None,
        tone: bytes | None = None,
        extra_args: Sequence[str] = (),
        workdir: str | Path | None = None,
        keep: bool = False,
        sipp_bin: str = SIPP_BIN,
    ) -> None:
        path = Path(scenario)
        if not path.is_absolute() and not path.exists():
            path = SIPP_DIR / path
        if not path.suffix:
            path = path.with_suffix(".xml")
        if not path.exists():
            raise FileNotFoundError(path)
        self.scenario = path
        self.server = _server_addr(server)
        self.keys = {k: str(v) for k, v in (keys or {}).items()}
        self.transport = transport
        self.local_port = local_port or free_udp_port()
        self.media_port = media_port or free_port_pair()
        self.control_port = free_udp_port()
        self.duration_ms = int(duration_ms)
        self.calls = calls
        self.timeout_s = timeout_s
        self._own_dir = workdir is None
        self.workdir = (
            Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"sipp-{path.stem}-"))
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        if tone is not None:
            (self.workdir / TONE_FILE).write_bytes(tone)
        elif TONE_FILE in path.read_text() and not (self.workdir / TONE_FILE).exists():
            # SIPp loads the rtp_stream file at start-up and exits 1 if it is missing
            pcmu_tone_file(self.workdir / TONE_FILE, 1004, 1.0)
        self.messages_path = self.workdir / "messages.log"
        self.errors_path = self.workdir / "errors.log"
        self.screen_path = self.workdir / "screen.txt"
        args = [
            sipp_bin,
            f"{self.server[0]}:{self.server[1]}",
            "-sf",
            str(self.scenario),
            "-t",
            transport,
            "-i",
            LOCALHOST,
            "-p",
            str(self.local_port),
            "-mi",
            LOCALHOST,
            "-mp",
            str(self.media_port),
            "-ci",
            LOCALHOST,
            "-cp",
            str(self.control_port),
            "-m",
            str(calls),
            "-l",
            str(max(1, calls)),
            "-d",
            str(self.duration_ms),
            "-timeout",
            f"{max(1, round(timeout_s))}s",
            "-timeout_error",
            "-nostdin",
            "-aa",
            "-trace_msg",
            "-message_file",
            str(self.messages_path),
            "-trace_err",
            "-error_file",
            str(self.errors_path),
        ]
        if recv_timeout_ms:
            args += ["-recv_timeout", str(recv_timeout_ms)]
        for k, v in self.keys.items():
            args += ["-key", k, v]
        args += list(extra_args)
        self.args: list[str] = args
        self.process: subprocess.Popen[bytes] | None = None
        self._screen: IO[bytes] | None = None

    # ---- process control

    def start(self) -> SippRun:
        self._screen = open(self.screen_path, "wb")  # noqa: SIM115 - closed in wait()/kill()
        self.process = subprocess.Popen(
            self.args,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._screen,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Exit code (see ``EXIT_*``). Default timeout: SIPp's own ``-timeout`` + 10 s.
        On timeout SIPp is killed and :class:`TimeoutError` raised."""
        assert self.process is not None, "not started"
        limit = self.timeout_s + 10 if timeout is None else timeout
        try:
            rc = self.process.wait(limit)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TimeoutError(
                f"SIPp {self.scenario.name} still running after {limit}s; killed"
            ) from None
        if self._screen:
            self._screen.close()
        return rc

    def stop(self) -> None:
        """Soft exit (SIGUSR1: no new calls, current ones finish)."""
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGUSR1)

    def kill(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.kill()
            self.process.wait(5)
        if self._screen:
            self._screen.close()

    def close(self) -> None:
        self.kill()
        if self._own_dir and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> SippRun:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- logs

    def messages_log(self) -> str:
        try:
            return self.messages_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def errors_log(self) -> str:
        try:
            return self.errors_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def screen(self) -> str:
        try:
            return self.screen_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def entries(self, *, complete_only: bool = False) -> list[SipLogEntry]:
        return parse_messages_log(self.messages_log(), complete_only=complete_only and self.running)

    def received_sdp(self) -> list[SdpMedia]:
        """m= sections of the first received message carrying application/sdp."""
        for e in self.entries(complete_only=True):
            if e.direction == "received" and e.sdp:
                return e.sdp
        return []

    def received_sdp_ports(self) -> list[int]:
        """m= ports of the first received SDP (e.g. the recorder's 200 OK)."""
        return [m.port for m in self.received_sdp()]

    def wait_for_received_sdp(self, timeout: float = 10, min_media: int = 1) -> list[SdpMedia]:
        """Poll the message log until a received SDP with >= ``min_media`` m-lines appears."""
        deadline = time.monotonic() + timeout
        while True:
            sdp = self.received_sdp()
            if len(sdp) >= min_media:
                return sdp
            if not self.running:
                sdp = self.received_sdp()
                if len(sdp) >= min_media:
                    return sdp
                raise RuntimeError(
                    f"SIPp exited ({self.returncode}) without receiving SDP\n"
                    f"{self.errors_log()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError("no SDP received from the server")
            time.sleep(0.01)

    def result(self) -> SippResult:
        rc = self.returncode
        return SippResult(
            self.scenario.name,
            -1 if rc is None else rc,
            self.messages_log(),
            self.errors_log(),
            self.workdir,
        )


# --------------------------------------------------------------------------- CUCM built-in-bridge


@dataclass
class CucmCallResult:
    near: SippResult
    far: SippResult

    @property
    def ok(self) -> bool:
        return self.near.ok and self.far.ok

    @property
    def exit_codes(self) -> tuple[int, int]:
        return self.near.exit_code, self.far.exit_code

    @property
    def call_ids(self) -> tuple[str | None, str | None]:
        return self.near.call_id(), self.far.call_id()

    def describe(self) -> str:
        return f"NEAR {self.near.describe()}\n\nFAR {self.far.describe()}"


class CucmCall:
    """A running CUCM BiB recording: two concurrent SIPp legs (near, far)."""

    def __init__(self, near: SippRun, far: SippRun) -> None:
        self.near = near
        self.far = far

    def wait(self, timeout: float | None = None) -> CucmCallResult:
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            self.near.wait(None if deadline is None else max(0.1, deadline - time.monotonic()))
            self.far.wait(None if deadline is None else max(0.1, deadline - time.monotonic()))
            return CucmCallResult(self.near.result(), self.far.result())
        finally:
            self.close()

    def close(self) -> None:
        self.near.close()
        self.far.close()

    def __enter__(self) -> CucmCall:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cucm_keys(
    side: str, recorder: str, near: str, far: str, refci: str, farrefci: str
) -> dict[str, str]:
    return {
        "recorder": recorder,
        "side": side,
        "near": near,
        "far": far,
        "refci": refci,
        "farrefci": farrefci,
    }


def start_cucm_call(
    server_host: str,
    server_port: int,
    near: str = "1001",
    far: str = "1002",
    refci: str | int = "16777217",
    near_tone_hz: float = 440,
    far_tone_hz: float = 1004,
    seconds: float = 2.0,
    transport: Transport = "u1",
    *,
    recorder: str = "9999",
    farrefci: str | int | None = None,
    reinvite: bool = False,
    far_delay_s: float = 0.0,
    timeout_s: float | None = None,
    keep: bool = False,
) -> CucmCall:
    """Start both BiB legs (near: ``x-nearend`` + ``near_tone_hz``, far: ``x-farend``
    + ``far_tone_hz``) and return without waiting.

    Each leg streams its tone for ``seconds`` (whole 20 ms packets) then BYEs
    ~0.3 s later. With ``reinvite`` the legs use cucm_leg_reinvite.xml: tone for
    seconds/2, hold 1 s (no RTP), tone for seconds/2, BYE.
    """
    farrefci = (
        str(int(refci) + 1) if farrefci is None and str(refci).isdigit() else str(farrefci or "0")
    )
    scenario = "cucm_leg_reinvite.xml" if reinvite else "cucm_leg.xml"
    duration_ms = int(seconds * 500) if reinvite else int(seconds * 1000) + 300
    total = seconds + (1.5 if reinvite else 0.3)
    legs = []
    for side, hz in (("nearend", near_tone_hz), ("farend", far_tone_hz)):
        legs.append(
            SippRun(
                scenario,
                (server_host, server_port),
                keys=_cucm_keys(side, recorder, near, far, str(refci), farrefci),
                transport=transport,
                duration_ms=duration_ms,
                timeout_s=timeout_s or total + far_delay_s + 20,
                tone=pcmu_tone(hz, seconds),
                keep=keep,
            )
        )
    legs[0].start()
    if far_delay_s:
        time.sleep(far_delay_s)
    legs[1].start()
    return CucmCall(legs[0], legs[1])


def run_cucm_call(
    server_host: str,
    server_port: int,
    near: str = "1001",
    far: str = "1002",
    refci: str | int = "16777217",
    near_tone_hz: float = 440,
    far_tone_hz: float = 1004,
    seconds: float = 2.0,
    transport: Transport = "u1",
    *,
    recorder: str = "9999",
    farrefci: str | int | None = None,
    reinvite: bool = False,
    far_delay_s: float = 0.0,
    timeout_s: float | None = None,
    keep: bool = False,
) -> CucmCallResult:
    """Run one recorded CUCM call (two concurrent BiB legs) to completion."""
    return start_cucm_call(
        server_host,
        server_port,
        near,
        far,
        refci,
        near_tone_hz,
        far_tone_hz,
        seconds,
        transport,
        recorder=recorder,
        farrefci=farrefci,
        reinvite=reinvite,
        far_delay_s=far_delay_s,
        timeout_s=timeout_s,
        keep=keep,
    ).wait()


# --------------------------------------------------------------------------- SIPREC


@dataclass
class SiprecCallResult:
    sipp: SippResult
    answer: list[SdpMedia]  # the recorder's 200 OK SDP (m-lines)
    stream2_dest: tuple[str, int] | None  # where the caller stream (label 2) went
    stream2_source_port: int | None
    stream2_packets_sent: int
    stream2_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.sipp.ok and self.stream2_error is None and self.stream2_packets_sent > 0

    def describe(self) -> str:
        return (
            f"stream2 -> {self.stream2_dest} sent={self.stream2_packets_sent} "
            f"err={self.stream2_error}\n{self.sipp.describe()}"
        )


def run_siprec_call(
    server: ServerAddr,
    caller: str = "alice",
    callee: str = "bob",
    caller_hz: float = 440,
    callee_hz: float = 1004,
    seconds: float = 2.0,
    *,
    recorder: str = "9999",
    transport: Transport = "u1",
    impairment: Impairment | None = None,
    timeout_s: float | None = None,
    keep: bool = False,
) -> SiprecCallResult:
    """One SIPREC session: SIPp sends the callee's tone (label 1) to the answer's
    first m=audio; a Python :class:`RtpSender` sends the caller's tone (label 2,
    optional ``impairment``) from ``-mp``+4 to the second m=audio. Blocks until done."""
    run = SippRun(
        "siprec.xml",
        server,
        keys={"recorder": recorder, "caller": caller, "callee": callee},
        transport=transport,
        duration_ms=int(seconds * 1000) + 300,
        timeout_s=timeout_s or seconds + 20,
        tone=pcmu_tone(callee_hz, seconds),
        keep=keep,
    )
    sender: RtpSender | None = None
    answer: list[SdpMedia] = []
    dest: tuple[str, int] | None = None
    err: str | None = None
    try:
        run.start()
        try:
            answer = run.wait_for_received_sdp(timeout=min(15.0, run.timeout_s), min_media=1)
        except (RuntimeError, TimeoutError) as exc:
            err = str(exc)
        if len(answer) >= 2:
            dest = (answer[1].host or _server_addr(server)[0], answer[1].port)
            sender = RtpSender(
                dest,
                pcmu_tone(caller_hz, seconds),
                impairment=impairment,
                bind=(LOCALHOST, run.media_port + 4),
            )
            sender.start()
        elif err is None:
            err = f"answer has {len(answer)} m-line(s), expected 2"
        run.wait()
        if sender is not None:
            try:
                sender.join(5)
            except Exception as exc:
                err = f"RTP sender failed: {exc!r}"
        return SiprecCallResult(
            run.result(),
            answer,
            dest,
            run.media_port + 4 if sender else None,
            sender.packets_sent if sender else 0,
            err,
        )
    finally:
        if sender is not None:
            sender.stop()
        run.close()


# --------------------------------------------------------------------------- errors / OPTIONS


def invite_response_code(server: ServerAddr, *args: Any,
                         **kwargs: Any) -> tuple[int | None, SippResult]:
    """Send a CUCM-style INVITE (invite_expect.xml; the arguments of invite_expect_run)
    and return the final response code the server gave (None if none) plus the SIPp
    result. SIPp exits 0 only for a 4xx/5xx/6xx that it ACKed."""
    with invite_expect_run(server, *args, **kwargs) as run:
        run.wait()
        res = run.result()
    return res.final_response_code("INVITE"), res


def invite_expect_run(
    server: ServerAddr,
    near_number: str = "1001",
    far_number: str = "1002",
    *,
    recorder: str = "9999",
    side: str = "nearend",
    refci: str | int = "16777217",
    farrefci: str | int = "16777218",
    transport: Transport = "u1",
    timeout_s: float = 15,
) -> SippRun:
    """invite_response_code's SIPp run, not started: for a test that starts it at a
    moment of its choosing (while a service is stopped)."""
    return SippRun(
        "invite_expect.xml",
        server,
        keys=_cucm_keys(side, recorder, near_number, far_number, str(refci), str(farrefci)),
        transport=transport,
        timeout_s=timeout_s,
    )


def expect_invite_response(
    server: ServerAddr,
    code: int,
    near_number: str = "1001",
    far_number: str = "1002",
    **kwargs: object,
) -> bool:
    """True iff the server rejected the INVITE with exactly ``code`` and SIPp's
    ACK completed the transaction (exit code 0)."""
    got, res = invite_response_code(server, near_number, far_number, **kwargs)  # type: ignore[arg-type]
    return res.ok and got == code


def options(
    server: ServerAddr,
    expect: int = 200,
    *,
    recorder: str = "9999",
    transport: Transport = "u1",
    timeout_s: float = 10,
) -> bool:
    """Send OPTIONS; True iff the response is ``expect`` (200 or 503)."""
    scenario = {200: "options.xml", 503: "options_503.xml"}.get(expect)
    if scenario is None:
        raise ValueError(f"no OPTIONS scenario expecting {expect}")
    with SippRun(
        scenario, server, keys={"recorder": recorder}, transport=transport, timeout_s=timeout_s
    ) as run:
        run.wait()
        res = run.result()
    return res.ok and res.final_response_code("OPTIONS") == expect


__all__ = [
    "EXIT_BIND_FAILED",
    "EXIT_CALL_FAILED",
    "EXIT_FATAL",
    "EXIT_INTERNAL_CMD",
    "EXIT_NO_CALLS",
    "EXIT_OK",
    "LOCALHOST",
    "SIPP_BIN",
    "SIPP_DIR",
    "CucmCall",
    "CucmCallResult",
    "Impairment",
    "SdpMedia",
    "ServerAddr",
    "SipLogEntry",
    "SippResult",
    "SippRun",
    "SiprecCallResult",
    "expect_invite_response",
    "free_port_block",
    "free_port_pair",
    "free_udp_port",
    "invite_response_code",
    "options",
    "parse_messages_log",
    "parse_sdp",
    "pcmu_tone_file",
    "run_cucm_call",
    "run_siprec_call",
    "start_cucm_call",
]


def run_bulk_cucm_calls(
    server_host: str,
    server_port: int,
    count: int,
    *,
    rate: float = 20.0,
    near: str = "1001",
    far: str = "2002",
    refci_prefix: str = "9",
    seconds: float = 0.5,
    tone_hz: float = 440.0,
    timeout_s: float | None = None,
) -> SippResult:
    """`count` one-leg CUCM recordings (near-end only), `rate` new calls per second,
    each with its own x-refci, from one SIPp process: loads a node with history."""
    run = SippRun(
        "cucm_bulk.xml",
        (server_host, server_port),
        keys=_cucm_keys("nearend", "9999", near, far, refci_prefix, "0"),
        duration_ms=int(seconds * 1000) + 200,
        calls=count,
        timeout_s=timeout_s or count / rate + 60,
        tone=pcmu_tone(tone_hz, seconds),
        extra_args=("-r", f"{rate:g}", "-l", str(max(1, int(rate * (seconds + 2))))),
    )
    try:
        run.start()
        run.wait()
        return run.result()
    finally:
        run.close()
