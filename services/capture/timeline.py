"""Turn the raw RTP datagrams stored for one stream into one channel of PCM.

The capture hot path only appends ``(arrival_ms, datagram)`` records, so all
interpretation happens here, once, when the call is finalized. Design goals:

* Wall-clock placement: every packet lands where it was heard, so near and
  far channels line up and gaps (loss, hold, silence suppression) stay
  silent instead of shifting later audio earlier.
* Robust to jitter: each "run" (one SSRC with one consistent RTP clock) is
  anchored with the *least delayed* packet, then placed purely by RTP
  timestamp, so network jitter never stretches or squeezes the audio.
* Never crash on garbage: anything unparsable is counted and skipped.

All codecs we accept use an 8000 Hz RTP clock (G.722 included, RFC 3551).

Static payload types mean their RFC 3551 codec whatever the SDP answer listed: a
CUCM answer naming only PCMU is followed by PCMA on PT 8 in the wild, and we had
offered PCMA ourselves. A stream that carried packets yet produced no audio says
why (:data:`SilentReason`), so a silent channel is never a mystery.
"""

from __future__ import annotations

import functools
import itertools
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import av
import numpy as np
import numpy.typing as npt
from aiortc.rtp import RtpPacket

from callrec.audio import PCMA_DECODE_TABLE, PCMU_DECODE_TABLE

__all__ = [
    "RTP_CLOCK_HZ",
    "STATIC_PAYLOAD_CODECS",
    "ChannelResult",
    "DtmfEvent",
    "RtpRecord",
    "Run",
    "RunPacket",
    "SilentReason",
    "Span",
    "StreamStats",
    "anchor_ms",
    "build_channel",
    "collect_dtmf",
    "decode_spans",
    "dedupe_run",
    "normalize_codec",
    "parse_record",
    "parse_telephone_event",
    "resample",
    "silent_reason",
    "split_runs",
    "unwrap",
]

RTP_CLOCK_HZ = 8000
"""RTP timestamp clock of every codec we decode (G.722's is 8000 by RFC)."""

MAX_CLOCK_SKEW_MS = 1000.0
"""A timestamp step this far off the arrival step means the clock was reset."""

MAX_SEQ_JUMP = 3000
"""A sequence jump this large (a minute of 20 ms packets) means a reset, not loss."""

_RUN_LOOKBACK = 4
"""How many earlier runs of an SSRC a late packet may still join."""

STATIC_PAYLOAD_CODECS: dict[int, str] = {0: "PCMU", 8: "PCMA", 9: "G722", 18: "G729"}
"""RFC 3551 static payload types of the codecs we decode (and offer)."""

SilentReason = Literal["no_packets", "not_rtp", "dtmf_only", "undecodable"]
"""Why a stream produced no audio: nothing arrived; nothing that arrived was RTP
inside the recording; only RFC 4733 events; RTP whose payload we cannot decode
(a payload type no SDP mapped, or a codec that failed on every packet)."""

_NATIVE_RATE = {"PCMU": 8000, "PCMA": 8000, "G722": 16000, "G729": 8000}
_PYAV_NAME = {"PCMU": "pcm_mulaw", "PCMA": "pcm_alaw", "G722": "g722", "G729": "g729"}
_G711_TABLES = {"PCMU": PCMU_DECODE_TABLE, "PCMA": PCMA_DECODE_TABLE}
_DTMF = "telephone-event"
_DTMF_DIGITS = "0123456789*#ABCD"
_G729_FRAME = 10
_G729_SID = 2

Int16Array = npt.NDArray[np.int16]
FloatArray = npt.NDArray[np.float64]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    """One RFC 4733 key press, in recording-relative milliseconds."""

    digit: str
    start_ms: int
    duration_ms: int


@dataclass(slots=True)
class StreamStats:
    """Per-stream counters shown to users to explain what a recording lacks.

    ``packets_received`` counts every stored datagram; the other packet
    counters are subsets of it (``packets_lost`` counts sequence gaps, i.e.
    packets that never arrived).
    """

    packets_received: int = 0
    packets_invalid: int = 0
    packets_duplicate: int = 0
    packets_lost: int = 0
    packets_outside: int = 0
    ssrc_changes: int = 0
    codecs: list[str] = field(default_factory=list)
    unknown_payload: int = 0
    unknown_payload_types: list[int] = field(default_factory=list)
    packets_decoded: int = 0
    silent_reason: SilentReason | None = None


@dataclass(slots=True)
class ChannelResult:
    """One decoded channel plus what was learned while building it.

    ``first_arrival_ms``/``last_arrival_ms`` cover valid RTP packets inside
    the recording (None when there were none).
    """

    samples: Int16Array
    stats: StreamStats
    dtmf: list[DtmfEvent]
    first_arrival_ms: int | None = None
    last_arrival_ms: int | None = None


# --------------------------------------------------------------------------- parsing


class RtpRecord(NamedTuple):
    """The fields of one valid RTP datagram that finalize needs."""

    arrival_ms: float
    ssrc: int
    seq: int
    ts: int
    pt: int
    payload: bytes


def parse_record(arrival_ms: float, data: bytes) -> RtpRecord | None:
    """Parse one stored datagram; None for anything that is not RTP media.

    RTCP multiplexed on the RTP port (RFC 5761, packet types 192-223) parses
    as RTP with bogus fields, so it is rejected here too.
    """
    if len(data) < 12 or (data[0] >> 6) != 2 or 192 <= data[1] <= 223:
        return None
    try:
        packet = RtpPacket.parse(data)
    except (ValueError, IndexError, struct.error):
        return None
    return RtpRecord(
        float(arrival_ms),
        packet.ssrc,
        packet.sequence_number,
        packet.timestamp,
        packet.payload_type,
        bytes(packet.payload),
    )


def normalize_codec(name: str) -> str:
    """Canonical codec name: 'pcmu/8000' -> 'PCMU', 'G.722' -> 'G722'."""
    base = name.split("/", 1)[0].strip()
    if base.lower() == _DTMF:
        return _DTMF
    upper = base.upper().replace(".", "")
    return upper if upper else base


def unwrap(value: int, reference: int, bits: int) -> int:
    """Extend a wrapping counter to the value closest to ``reference``."""
    modulus = 1 << bits
    half = modulus >> 1
    delta = ((value - reference + half) % modulus) - half
    return reference + delta


def parse_telephone_event(payload: bytes) -> tuple[int, bool, int] | None:
    """(event code, end bit, duration in RTP clock units) of an RFC 4733 payload."""
    if len(payload) < 4:
        return None
    return payload[0], bool(payload[1] & 0x80), (payload[2] << 8) | payload[3]


# --------------------------------------------------------------------------- runs


class RunPacket(NamedTuple):
    """A packet inside a run, with extended sequence number and timestamp."""

    seq_ext: int
    ts_ext: int
    arrival_ms: float
    codec: str | None
    payload: bytes


@dataclass(slots=True)
class Run:
    """Packets of one SSRC that share one consistent RTP timestamp clock."""

    ssrc: int
    packets: list[RunPacket] = field(default_factory=list)
    max_seq_ext: int = 0
    max_ts_ext: int = 0
    ref_arrival_ms: float | None = None
    ref_ts_ext: int = 0
    first_arrival_ms: float = 0.0

    def fit(self, seq: int, ts: int, arrival_ms: float, audio: bool) -> tuple[int, int] | None:
        """Extended (seq, ts) if the packet continues this run, else None."""
        seq_ext = unwrap(seq, self.max_seq_ext, 16)
        if abs(seq_ext - self.max_seq_ext) > MAX_SEQ_JUMP:
            return None
        if audio and self.ref_arrival_ms is not None:
            ts_ext = unwrap(ts, self.ref_ts_ext, 32)
            expected = (ts_ext - self.ref_ts_ext) * 1000.0 / RTP_CLOCK_HZ
            if abs((arrival_ms - self.ref_arrival_ms) - expected) > MAX_CLOCK_SKEW_MS:
                return None
        else:
            ts_ext = unwrap(ts, self.max_ts_ext, 32)
        return seq_ext, ts_ext

    def add(self, packet: RunPacket, audio: bool) -> None:
        """Append a packet and move the references used by :meth:`fit`."""
        if not self.packets:
            self.max_seq_ext = packet.seq_ext
            self.max_ts_ext = packet.ts_ext
            self.first_arrival_ms = packet.arrival_ms
        self.packets.append(packet)
        self.max_seq_ext = max(self.max_seq_ext, packet.seq_ext)
        self.max_ts_ext = max(self.max_ts_ext, packet.ts_ext)
        if audio:
            # Compare against the latest audio packet only, so clock drift
            # between sender and capture host never accumulates.
            self.ref_arrival_ms = packet.arrival_ms
            self.ref_ts_ext = packet.ts_ext


def split_runs(packets: Iterable[RtpRecord], codecs: dict[int, str]) -> list[Run]:
    """Group arrival-ordered packets into runs (new SSRC or clock reset).

    ``codecs`` maps payload type to a normalized codec name. Only audio
    packets steer the clock-consistency check: a long DTMF event keeps its
    start timestamp while arrival time advances, and unknown payload types
    may use another clock.
    """
    runs: list[Run] = []
    by_ssrc: dict[int, list[Run]] = {}
    for rec in packets:
        codec = codecs.get(rec.pt)
        audio = codec in _NATIVE_RATE
        candidates = by_ssrc.setdefault(rec.ssrc, [])
        target: Run | None = None
        ext: tuple[int, int] | None = None
        for run in reversed(candidates[-_RUN_LOOKBACK:]):
            ext = run.fit(rec.seq, rec.ts, rec.arrival_ms, audio)
            if ext is not None:
                target = run
                break
        if target is None or ext is None:
            target = Run(ssrc=rec.ssrc)
            candidates.append(target)
            runs.append(target)
            ext = (rec.seq, rec.ts)
        target.add(RunPacket(ext[0], ext[1], rec.arrival_ms, codec, rec.payload), audio)
    return runs


def dedupe_run(packets: Sequence[RunPacket]) -> tuple[list[RunPacket], int, int]:
    """Sort by sequence; return (unique packets, duplicates, lost).

    The first arrival of a sequence number wins; lost counts the holes
    between the lowest and highest sequence number of the run.
    """
    ordered = sorted(packets, key=lambda p: (p.seq_ext, p.arrival_ms))
    unique: list[RunPacket] = []
    last: int | None = None
    for packet in ordered:
        if packet.seq_ext != last:
            unique.append(packet)
            last = packet.seq_ext
    duplicates = len(ordered) - len(unique)
    lost = 0
    if unique:
        lost = unique[-1].seq_ext - unique[0].seq_ext + 1 - len(unique)
    return unique, duplicates, lost


def anchor_ms(packets: Sequence[RunPacket]) -> tuple[float, int]:
    """(wall time of ``ts_base``, ``ts_base``) for a run, robust to jitter.

    Every packet bounds the anchor from above by its arrival minus its
    timestamp offset; the tightest bound is the least delayed packet.
    Audio packets are preferred because DTMF timestamps mark event starts.
    """
    audio = [p for p in packets if p.codec in _NATIVE_RATE]
    chosen = audio or list(packets)
    if not chosen:
        return 0.0, 0
    ts_base = min(p.ts_ext for p in chosen)
    scale = 1000.0 / RTP_CLOCK_HZ
    anchor = min(p.arrival_ms - (p.ts_ext - ts_base) * scale for p in chosen)
    return anchor, ts_base


# --------------------------------------------------------------------------- DTMF


def collect_dtmf(
    packets: Sequence[RunPacket], anchor: float, ts_base: int
) -> tuple[list[DtmfEvent], int]:
    """Fold RFC 4733 packets into events; returns (events, undecodable count).

    All packets of one event (including the repeated end packets) share its
    start timestamp, so events are keyed by (timestamp, code) and take the
    longest duration reported.
    """
    durations: dict[tuple[int, int], int] = {}
    bad = 0
    for packet in packets:
        if packet.codec != _DTMF:
            continue
        parsed = parse_telephone_event(packet.payload)
        if parsed is None:
            bad += 1
            continue
        code, _end, duration = parsed
        if code >= len(_DTMF_DIGITS):
            continue
        key = (packet.ts_ext, code)
        durations[key] = max(durations.get(key, 0), duration)
    scale = 1000.0 / RTP_CLOCK_HZ
    events = [
        DtmfEvent(
            digit=_DTMF_DIGITS[code],
            start_ms=round(anchor + (ts_ext - ts_base) * scale),
            duration_ms=round(duration * scale),
        )
        for (ts_ext, code), duration in durations.items()
    ]
    return events, bad


# --------------------------------------------------------------------------- decoding


class Span(NamedTuple):
    """Contiguous decoded audio starting at an extended RTP timestamp."""

    ts_ext: int
    rate: int
    samples: Int16Array


class _Decoders:
    """One decoder per codec per run, so stateful codecs see a continuous stream."""

    def __init__(self) -> None:
        self._contexts: dict[str, av.AudioCodecContext] = {}

    def _context(self, codec: str) -> av.AudioCodecContext:
        ctx = self._contexts.get(codec)
        if ctx is None:
            created = av.CodecContext.create(_PYAV_NAME[codec], "r")
            assert isinstance(created, av.AudioCodecContext)
            created.sample_rate = _NATIVE_RATE[codec]
            created.layout = "mono"
            ctx = created
            self._contexts[codec] = ctx
        return ctx

    def decode(self, codec: str, payload: bytes) -> Int16Array | None:
        """Mono int16 at the codec's native rate, or None if undecodable."""
        table = _G711_TABLES.get(codec)
        if table is not None:
            return table[np.frombuffer(payload, dtype=np.uint8)]
        tail: Int16Array | None = None
        if codec == "G729" and len(payload) % _G729_FRAME == _G729_SID:
            # Annex B SID frame: FFmpeg rejects it; comfort noise -> silence.
            payload = payload[:-_G729_SID]
            tail = np.zeros(80, dtype=np.int16)
            if not payload:
                return tail
        try:
            frames = self._context(codec).decode(av.Packet(payload))
            parts = [_mono_int16(frame.to_ndarray()) for frame in frames]
        except (av.FFmpegError, ValueError):
            # The context may be wedged after an error; start a fresh one.
            self._contexts.pop(codec, None)
            return None
        if tail is not None:
            parts.append(tail)
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _mono_int16(array: npt.NDArray[np.generic]) -> Int16Array:
    first = array[0] if array.ndim == 2 else array
    out: Int16Array
    if np.issubdtype(first.dtype, np.floating):
        scaled = np.round(first.astype(np.float64) * 32768.0)
        out = np.clip(scaled, -32768, 32767).astype(np.int16)
    else:
        out = np.clip(first.astype(np.int64), -32768, 32767).astype(np.int16)
    return out


def decode_spans(packets: Sequence[RunPacket]) -> tuple[list[Span], int]:
    """Decode a run's audio packets (seq order) into contiguous spans.

    Returns (spans, undecodable packet count); the decoded count is the
    audio packets minus the undecodable ones. A new span starts wherever the
    timestamp does not continue exactly (loss, overlap, silence suppression)
    or the native rate changes; spans are returned in sequence order so
    later packets overwrite earlier ones when they overlap.
    """
    decoders = _Decoders()
    spans: list[Span] = []
    bad = 0
    cur_ts = 0
    cur_end = 0
    cur_rate = 0
    cur_parts: list[Int16Array] = []

    def flush() -> None:
        if cur_parts:
            joined = cur_parts[0] if len(cur_parts) == 1 else np.concatenate(cur_parts)
            spans.append(Span(cur_ts, cur_rate, joined))

    for packet in packets:
        codec = packet.codec
        if codec not in _NATIVE_RATE or codec is None:
            continue
        if not packet.payload:
            continue
        samples = decoders.decode(codec, packet.payload)
        if samples is None or samples.size == 0:
            bad += 1
            continue
        rate = _NATIVE_RATE[codec]
        clock_len = samples.size * RTP_CLOCK_HZ // rate
        if cur_parts and packet.ts_ext == cur_end and rate == cur_rate:
            cur_parts.append(samples)
        else:
            flush()
            cur_parts = [samples]
            cur_ts = packet.ts_ext
            cur_rate = rate
        cur_end = packet.ts_ext + clock_len
    flush()
    return spans, bad


# --------------------------------------------------------------------------- resampling

_TAPS_PER_SIDE = 16
_KAISER_BETA = 6.0
_CUTOFF = 0.95
_MAX_POLYPHASE = 64


@functools.lru_cache(maxsize=16)
def _polyphase(up: int, down: int) -> tuple[tuple[FloatArray, ...], int]:
    # Windowed-sinc low-pass at the upsampled rate, cut just below the lower
    # Nyquist frequency, split into `up` phases (one per output offset).
    ratio = max(up, down)
    half = _TAPS_PER_SIDE * ratio
    n = np.arange(-half, half + 1, dtype=np.float64)
    cutoff = 0.5 * _CUTOFF / ratio
    h = 2.0 * cutoff * np.sinc(2.0 * cutoff * n) * np.kaiser(n.size, _KAISER_BETA)
    h *= up / h.sum()
    return tuple(np.ascontiguousarray(h[r::up]) for r in range(up)), half


def resample(samples: npt.ArrayLike, in_rate: int, out_rate: int) -> FloatArray:
    """Band-limited rational resampling of one contiguous span.

    Output length is ``len * out_rate // in_rate`` and sample 0 stays
    aligned with input sample 0 (the filter is zero-phase). Exotic ratios
    fall back to linear interpolation rather than building huge filters.
    """
    x = np.asarray(samples, dtype=np.float64)
    if in_rate == out_rate or x.size == 0:
        return x.copy()
    g = math.gcd(in_rate, out_rate)
    up, down = out_rate // g, in_rate // g
    n_out = x.size * up // down
    if n_out == 0:
        return np.zeros(0, dtype=np.float64)
    if max(up, down) > _MAX_POLYPHASE:
        positions = np.arange(n_out, dtype=np.float64) * in_rate / out_rate
        return np.interp(positions, np.arange(x.size, dtype=np.float64), x)
    phases, center = _polyphase(up, down)
    out = np.zeros(n_out, dtype=np.float64)
    for n0 in range(min(up, n_out)):
        count = (n_out - n0 + up - 1) // up
        m = n0 * down + center
        taps = phases[m % up]
        conv = np.convolve(x, taps)
        start = m // up
        stop = start + down * (count - 1) + 1
        if stop > conv.size:
            conv = np.concatenate([conv, np.zeros(stop - conv.size)])
        out[n0::up] = conv[start:stop:down]
    return out


# --------------------------------------------------------------------------- assembly


def silent_reason(stats: StreamStats, *, has_rtp: bool, has_dtmf: bool) -> SilentReason | None:
    """Why a stream produced no audio at all; None when some audio was decoded."""
    if stats.packets_decoded > 0:
        return None
    if stats.packets_received == 0:
        return "no_packets"
    if not has_rtp:
        return "not_rtp"
    if has_dtmf and stats.unknown_payload == 0:
        return "dtmf_only"
    return "undecodable"


def _place(output: Int16Array, offset: int, values: FloatArray | Int16Array) -> None:
    """Write ``values`` at ``offset``, clipped to the output (later wins)."""
    total = output.size
    start = max(offset, 0)
    stop = min(offset + values.size, total)
    if start >= stop:
        return
    chunk = values[start - offset : stop - offset]
    if chunk.dtype != np.int16:
        chunk = np.clip(np.round(chunk), -32768, 32767).astype(np.int16)
    output[start:stop] = chunk


def build_channel(
    records: Iterable[tuple[int, bytes]],
    payload_codecs: dict[int, str],
    duration_ms: int,
    out_rate: int = 16000,
) -> ChannelResult:
    """Build one channel of ``duration_ms`` at ``out_rate`` from stored RTP.

    ``records`` are ``(arrival_ms relative to the recording start, datagram)``.
    ``payload_codecs`` is every payload-type mapping the call negotiated; the
    static payload types of :data:`STATIC_PAYLOAD_CODECS` are decoded even when
    the negotiation did not list them (an SDP's own rtpmap still wins).
    """
    if out_rate <= 0:
        raise ValueError(f"invalid output rate {out_rate}")
    total = max(int(duration_ms), 0) * out_rate // 1000
    output = np.zeros(total, dtype=np.int16)
    stats = StreamStats()
    codecs = dict(STATIC_PAYLOAD_CODECS)
    codecs.update({int(pt): normalize_codec(str(name)) for pt, name in payload_codecs.items()})

    valid: list[RtpRecord] = []
    for arrival, data in records:
        stats.packets_received += 1
        try:
            rec = parse_record(float(arrival), bytes(data))
        except (TypeError, ValueError, OverflowError):
            rec = None
        if rec is None:
            stats.packets_invalid += 1
        elif not 0.0 <= rec.arrival_ms < duration_ms:
            stats.packets_outside += 1
        else:
            valid.append(rec)
    valid.sort(key=lambda r: r.arrival_ms)

    seen_codecs = {codecs[r.pt] for r in valid if r.pt in codecs}
    stats.codecs = sorted(seen_codecs)
    runs = split_runs(valid, codecs)
    runs.sort(key=lambda r: r.first_arrival_ms)
    stats.ssrc_changes = sum(1 for a, b in itertools.pairwise(runs) if a.ssrc != b.ssrc)

    stats.unknown_payload_types = sorted({r.pt for r in valid if r.pt not in codecs})
    dtmf: list[DtmfEvent] = []
    to_out = out_rate / RTP_CLOCK_HZ
    for run in runs:
        unique, duplicates, lost = dedupe_run(run.packets)
        stats.packets_duplicate += duplicates
        stats.packets_lost += lost
        stats.unknown_payload += sum(
            1 for p in unique if p.codec != _DTMF and p.codec not in _NATIVE_RATE
        )
        anchor, ts_base = anchor_ms(unique)
        events, bad_dtmf = collect_dtmf(unique, anchor, ts_base)
        dtmf.extend(events)
        spans, bad_audio = decode_spans(unique)
        stats.unknown_payload += bad_dtmf + bad_audio
        stats.packets_decoded += (
            sum(1 for p in unique if p.codec in _NATIVE_RATE and p.payload) - bad_audio
        )
        anchor_samples = round(anchor * out_rate / 1000.0)
        for span in spans:
            offset = anchor_samples + round((span.ts_ext - ts_base) * to_out)
            values: FloatArray | Int16Array = span.samples
            if span.rate != out_rate:
                values = resample(span.samples, span.rate, out_rate)
            _place(output, offset, values)

    dtmf.sort(key=lambda e: (e.start_ms, e.digit))
    stats.silent_reason = silent_reason(stats, has_rtp=bool(valid), has_dtmf=bool(dtmf))
    first = min((r.arrival_ms for r in valid), default=None)
    last = max((r.arrival_ms for r in valid), default=None)
    return ChannelResult(
        samples=output,
        stats=stats,
        dtmf=dtmf,
        first_arrival_ms=None if first is None else int(first),
        last_arrival_ms=None if last is None else int(last),
    )
