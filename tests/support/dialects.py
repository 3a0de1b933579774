"""Run a PBX/SBC dialect sample against a recorder: SIP from the sample, RTP tones.

A sample (``tests/data/dialects/NAME.toml``) holds what one vendor's device sends,
written from that vendor's public documentation (named in the file's comments):

* ``transport``: ``udp`` or ``tcp``;
* ``[[legs]]``: one SIP dialog each (a SIPREC session: one; a CUCM recording: the
  near-end and the far-end leg), with ``invite`` (the full request), optionally
  ``ack_body`` (the SDP answer a delayed offer puts in the ACK) and
  ``[[legs.requests]]`` sent mid-call: ``at`` (seconds after media starts),
  ``text`` (the full request), ``media`` (``"off"``/``"on"``: the leg's RTP stops
  or resumes after it, as on hold).

Texts use ``$name`` placeholders (:class:`string.Template`): ``$recorder`` (host:port
of the recorder), ``$local`` (our SIP host:port), ``$transport`` (UDP/TCP),
``$call_id``, ``$from_tag``, ``$branch``, ``$to_tag`` (from the 2xx, for in-dialog
requests), ``$cseq`` (next CSeq of the dialog), ``$rtp0``, ``$rtp1``... (the ports our
tone streams send from, in stream order), ``$refci`` (a fresh CUCM call reference)
and ``$uniq`` (a fresh token for ids that must not repeat between runs).

The streams (which answer m-line each goes to, codec, tone) come from the test's
expectations table, so a sample file stays a faithful copy of the wire format.
"""

from __future__ import annotations

import random
import socket
import string
import threading
import time
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np

from . import g729
from .rtp import tone_samples, ulaw_encode
from .sipp import SdpMedia, parse_sdp
from .uac import Dialog, SipMessage, Uac, UacError, finish_message

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "data" / "dialects"
Codec = Literal["PCMU", "PCMA", "G722", "G729"]
STATIC_PT: dict[Codec, int] = {"PCMU": 0, "PCMA": 8, "G722": 9, "G729": 18}
PTIME_S = 0.02


# --------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class MidCall:
    at: float
    text: str
    media: Literal["on", "off"] | None = None


@dataclass(frozen=True)
class LegSample:
    invite: str
    ack_body: str = ""
    requests: tuple[MidCall, ...] = ()


@dataclass(frozen=True)
class Sample:
    name: str
    transport: str
    legs: tuple[LegSample, ...]
    source: str


def load_sample(name: str) -> Sample:
    path = SAMPLES_DIR / f"{name}.toml"
    data = tomllib.loads(path.read_text())
    source = "\n".join(line[1:].strip() for line in path.read_text().splitlines()
                       if line.startswith("#"))
    legs = tuple(
        LegSample(
            invite=leg["invite"],
            ack_body=leg.get("ack_body", ""),
            requests=tuple(MidCall(at=float(r["at"]), text=r["text"], media=r.get("media"))
                           for r in leg.get("requests", [])),
        )
        for leg in data["legs"]
    )
    return Sample(name=name, transport=data.get("transport", "udp"), legs=legs, source=source)


def sample_names() -> list[str]:
    return sorted(p.stem for p in SAMPLES_DIR.glob("*.toml"))


# --------------------------------------------------------------------------- audio


def encode_tone(codec: Codec, hz: float, seconds: float) -> list[bytes]:
    """A tone as one RTP payload per 20 ms in ``codec``."""
    pcm = tone_samples(hz, seconds, amplitude=0.4)
    if codec == "PCMU":
        data, size = ulaw_encode(pcm), 160
    elif codec == "G729":
        data, size = g729.g729_payload(pcm), 20
    else:
        rate = 16000 if codec == "G722" else 8000
        if rate != 8000:
            pcm = tone_samples(hz, seconds, amplitude=0.4, rate=rate)
        data, size = _pyav_encode("g722" if codec == "G722" else "pcm_alaw", pcm, rate), 160
    return [data[i : i + size] for i in range(0, len(data) - size + 1, size)]


def _pyav_encode(name: str, pcm: np.ndarray, rate: int) -> bytes:
    encoder = av.CodecContext.create(name, "w")
    assert isinstance(encoder, av.AudioCodecContext)
    encoder.sample_rate = rate
    encoder.layout = "mono"
    encoder.format = "s16"
    frame = av.AudioFrame.from_ndarray(pcm.astype(np.int16).reshape(1, -1), format="s16",
                                       layout="mono")
    frame.sample_rate = rate
    packets = [*encoder.encode(frame), *encoder.encode(None)]
    return b"".join(bytes(p) for p in packets)


# --------------------------------------------------------------------------- media


@dataclass(frozen=True)
class StreamPlan:
    """One RTP stream of a leg: to the answer's m-line ``m`` (or of our offer in a
    delayed-offer 2xx), in ``codec`` sent as payload type ``pt`` (None: its static
    one), carrying a ``hz`` tone."""

    m: int
    codec: Codec
    hz: float
    pt: int | None = None


@dataclass
class ToneStream:
    plan: StreamPlan
    sock: socket.socket
    payloads: list[bytes]
    dest: tuple[str, int] | None = None
    active: bool = True
    seq: int = field(default_factory=lambda: random.getrandbits(16))
    ts: int = field(default_factory=lambda: random.getrandbits(32))
    ssrc: int = field(default_factory=lambda: random.getrandbits(32))
    index: int = 0
    sent: int = 0

    @property
    def port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    def tick(self) -> None:
        """One 20 ms slot: send the next packet (or stay silent on hold, the clock runs)."""
        if self.active and self.dest is not None and self.index < len(self.payloads):
            payload = self.payloads[self.index]
            self.index += 1
            pt = self.plan.pt if self.plan.pt is not None else STATIC_PT[self.plan.codec]
            header = bytes([0x80, pt | (0x80 if self.sent == 0 else 0)])
            header += self.seq.to_bytes(2, "big") + self.ts.to_bytes(4, "big")
            header += self.ssrc.to_bytes(4, "big")
            self.sock.sendto(header + payload, self.dest)
            self.sent += 1
            self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + 160) & 0xFFFFFFFF


# --------------------------------------------------------------------------- running


@dataclass
class LegRun:
    uac: Uac
    dialog: Dialog | None
    invite_response: SipMessage
    answer: list[SdpMedia]
    streams: list[ToneStream]
    responses: list[SipMessage] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def call_id(self) -> str:
        return self.invite_response.call_id


@dataclass
class DialectRun:
    sample: Sample
    legs: list[LegRun]

    @property
    def call_ids(self) -> list[str]:
        return [leg.call_id for leg in self.legs]


class _Fill(string.Template):
    idpattern = r"[a-z][a-z0-9_]*"


def _fill(text: str, values: dict[str, Any]) -> bytes:
    values = {**values, "branch": f"z9hG4bK{uuid.uuid4().hex[:20]}"}
    return finish_message(_Fill(text).substitute(values))


def run_dialect(
    sample: Sample,
    streams: list[list[StreamPlan]],
    recorder: tuple[str, int],
    *,
    seconds: float = 1.5,
) -> DialectRun:
    """Place every leg of the sample, play each stream's tone for ``seconds`` (plus
    the hold time the sample's requests take), send the mid-call requests, hang up."""
    refci = str(random.randrange(10**7, 10**8))
    uniq = uuid.uuid4().hex[:12]
    legs: list[LegRun] = []
    try:
        for leg_sample, plans in zip(sample.legs, streams, strict=True):
            uac = Uac(recorder, sample.transport)
            tone_streams = []
            for plan in plans:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind(("127.0.0.1", 0))
                tone_streams.append(ToneStream(plan, sock, encode_tone(plan.codec, plan.hz,
                                                                       seconds)))
            values: dict[str, Any] = {
                "recorder": f"{recorder[0]}:{recorder[1]}", "local": uac.local,
                "transport": uac.via_transport, "call_id": f"{uuid.uuid4().hex}@127.0.0.1",
                "from_tag": uuid.uuid4().hex[:10], "refci": refci, "uniq": uniq,
                **{f"rtp{i}": s.port for i, s in enumerate(tone_streams)},
            }
            response, dialog = uac.invite(_fill(leg_sample.invite, values))
            answer = parse_sdp(_sdp_part(response))
            leg = LegRun(uac, dialog, response, answer, tone_streams)
            legs.append(leg)
            if dialog is None:
                continue
            values["to_tag"] = response.to_tag() or ""
            values["contact"] = dialog.request_uri
            leg.values = values
            uac.ack(dialog, _Fill(leg_sample.ack_body).substitute(values).lstrip("\n")
                    if leg_sample.ack_body else "")
            for stream in tone_streams:
                if stream.plan.m < len(answer) and answer[stream.plan.m].port:
                    media = answer[stream.plan.m]
                    stream.dest = (media.host or recorder[0], media.port)
        _play(sample, legs, seconds)
    finally:
        for leg in legs:
            try:
                if leg.dialog is not None:
                    leg.responses.append(leg.uac.bye(leg.dialog))
            except UacError:
                pass
            for stream in leg.streams:
                stream.sock.close()
            leg.uac.close()
    return DialectRun(sample, legs)


def _play(sample: Sample, legs: list[LegRun], seconds: float) -> None:
    pending = [(req, leg, leg_sample) for leg, leg_sample in zip(legs, sample.legs, strict=False)
               for req in leg_sample.requests if leg.dialog is not None]
    pending.sort(key=lambda item: item[0].at)
    # Each hold (media "off") lasts about a second of the sample's timeline.
    hold_time = max((sum(1.0 for req in leg_sample.requests if req.media == "off")
                     for leg_sample in sample.legs), default=0.0)
    total = seconds + hold_time
    streams = [s for leg in legs for s in leg.streams]
    start = time.monotonic()
    slot = 0
    stop = threading.Event()
    while not stop.is_set():
        now = time.monotonic() - start
        while pending and pending[0][0].at <= now:
            request, leg, _ = pending.pop(0)
            assert leg.dialog is not None
            leg.dialog.cseq += 1
            values = {**leg.values, "cseq": leg.dialog.cseq}
            data = _fill(request.text, values)
            response = leg.uac.request(data)
            leg.responses.append(response)
            if data.startswith(b"INVITE") and 200 <= response.status < 300:
                leg.uac.ack(leg.dialog)
            if request.media is not None:
                for stream in leg.streams:
                    stream.active = request.media == "on"
        if now >= total and not pending:
            break
        for stream in streams:
            stream.tick()
        slot += 1
        delay = start + slot * PTIME_S - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def _sdp_part(message: SipMessage) -> str:
    """The SDP of a response, also from a multipart body."""
    content_type = (message.header("content-type") or "").lower()
    if "multipart" not in content_type:
        return message.body if "sdp" in content_type else ""
    for part in message.body.split("--"):
        head, _, body = part.replace("\r\n", "\n").partition("\n\n")
        if "application/sdp" in head.lower():
            return body
    return ""
