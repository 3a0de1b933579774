"""Turn the raw RTP datagrams stored for one stream into one channel of PCM.

The capture hot path only appends ``(arrival_ms, datagram)`` records, so all
interpretation happens here: while the call goes on, a step every flush
(:class:`StreamTimeline`, driven by live.py), and in one go for tests and the
whole-call reference (:func:`build_channel`, the same code without time bounds).
Design goals:

* Wall-clock placement: every packet lands where it was heard, so near and
  far channels line up and gaps (loss, hold, silence suppression) stay
  silent instead of shifting later audio earlier.
* Robust to jitter: each "run" (one SSRC with one consistent RTP clock) is
  anchored with the *least delayed* packet, then placed purely by RTP
  timestamp, so network jitter never stretches or squeezes the audio.
* Never crash on garbage: anything unparsable is counted and skipped.
* Bounded memory: packets are decoded in sequence order once they are a reorder
  window old, output before the emitted point is final, so memory does not grow
  with the call's length.

All codecs we accept use an 8000 Hz RTP clock (G.722 included, RFC 3551).

Static payload types mean their RFC 3551 codec whatever the SDP answer listed: a
CUCM answer naming only PCMU is followed by PCMA on PT 8 in the wild, and we had
offered PCMA ourselves. A stream that carried packets yet produced no audio says
why (:data:`SilentReason`), so a silent channel is never a mystery.

This module runs compiled by mypyc where set-up found a C compiler (callrec/native.py):
keep it fully typed, declare class constants ``Final``, and patch internals in tests
only on ``native.load_source``'s interpreted copy (compiled methods cannot be patched).
"""

from __future__ import annotations

import bisect
import functools
import heapq
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Literal, NamedTuple

import av
import numpy as np
import numpy.typing as npt

from callrec.audio import PCMA_DECODE_TABLE, PCMU_DECODE_TABLE
from services.capture.segments import RECORD_HEADER

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
    "StreamTimeline",
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

_MAX_DTMF_EVENTS = 10_000
"""Key presses kept per run: a stream of forged events cannot grow memory without end."""

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
    size = len(data)
    if size < 12 or (data[0] >> 6) != 2 or 192 <= data[1] <= 223:
        return None
    # RFC 3550's header read in place (about 2.4x cheaper than building an aiortc
    # RtpPacket per stored datagram; the same rules: CSRCs, extension, padding).
    first, second, seq, ts, ssrc = _RTP_HEADER.unpack_from(data)
    pos = 12 + 4 * (first & 0x0F)
    if size < pos:
        return None
    if first & 0x10:
        if size < pos + 4:
            return None
        pos += 4 + 4 * _EXTENSION_LENGTH.unpack_from(data, pos + 2)[0]
        if size < pos:
            return None
    end = size
    if first & 0x20:
        padding = data[-1]
        if not padding or padding > size - pos:
            return None
        end = size - padding
    return RtpRecord(float(arrival_ms), ssrc, seq, ts, second & 0x7F, data[pos:end])


_RTP_HEADER = struct.Struct("!BBHII")
_EXTENSION_LENGTH = struct.Struct("!H")


def _parse_at(arrival_ms: float, data: bytes, first: int, stop: int) -> RtpRecord | None:
    """:func:`parse_record` of ``data[first:stop]``, reading the common header (version
    2, no CSRC, extension or padding) in place: only the payload is copied."""
    if stop - first > 12 and data[first] == 0x80 and not 192 <= data[first + 1] <= 223:
        _, second, seq, ts, ssrc = _RTP_HEADER.unpack_from(data, first)
        return tuple.__new__(RtpRecord, (arrival_ms, ssrc, seq, ts, second & 0x7F,
                                         data[first + 12:stop]))
    return parse_record(arrival_ms, data[first:stop])


def native_rate(codec: str) -> int | None:
    """The sample rate a codec we decode produces ('PCMU' -> 8000), None if unknown."""
    return _NATIVE_RATE.get(normalize_codec(codec))


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
    count: int = 0

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

    def add(self, packet: RunPacket, audio: bool, *, keep: bool = True) -> None:
        """Append a packet (unless not ``keep``) and move the references used by :meth:`fit`."""
        if self.count == 0:
            self.max_seq_ext = packet.seq_ext
            self.max_ts_ext = packet.ts_ext
            self.first_arrival_ms = packet.arrival_ms
        self.count += 1
        if keep:
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


# --------------------------------------------------------------------------- streaming


class _Canvas:
    """The output of one stream from ``base`` on; everything before ``base`` is emitted.

    Placement is "later wins", as in a whole-call build; what falls before ``base``
    (already handed to the encoder) or before the recording start is dropped. Kept
    as the placed pieces rather than a dense buffer, so a long silence (a hold) costs
    nothing until it is taken, and then only as much as the caller takes at a time.
    """

    __slots__ = ("_pieces", "base", "floor", "late_samples", "shifted_samples")

    def __init__(self, base: int = 0) -> None:
        self.base = base
        self.floor = base  # output before it was made elsewhere (earlier process, stream)
        self._pieces: list[tuple[int, Int16Array]] = []
        self.late_samples = 0  # dropped: they belonged to output already emitted
        self.shifted_samples = 0  # silence inserted to keep later audio (see _Span)

    def place(self, offset: int, values: FloatArray | Int16Array) -> None:
        start = max(offset, self.base, 0)
        stop = offset + values.size
        self.late_samples += max(0, min(stop, self.base) - max(offset, self.floor))
        if start >= stop:
            return
        part = values[start - offset : stop - offset]
        chunk: Int16Array = (part.astype(np.int16, copy=False) if part.dtype == np.int16
                             else np.clip(np.round(part), -32768, 32767).astype(np.int16))
        self._pieces.append((start, chunk))

    def take(self, upto: int) -> Int16Array:
        """Samples [base, upto) (silence where nothing was placed); moves ``base``."""
        count = max(upto - self.base, 0)
        pieces = self._pieces
        if len(pieces) == 1 and pieces[0][0] == self.base and count \
                and pieces[0][1].size >= count:
            # The usual step: one piece covers it all (handed out as it is, no copy).
            values = pieces[0][1]
            self._pieces = [(upto, _own(values[count:]))] if values.size > count else []
            self.base = upto
            return values[:count]
        out = np.zeros(count, dtype=np.int16)
        keep: list[tuple[int, Int16Array]] = []
        for start, values in self._pieces:
            stop = start + values.size
            lo, hi = max(start, self.base), min(stop, upto)
            if lo < hi:
                out[lo - self.base : hi - self.base] = values[lo - start : hi - start]
            if stop > upto:
                keep.append((start, values) if start >= upto
                            else (upto, _own(values[upto - start:])))
        self._pieces = keep
        self.base = max(self.base, upto)
        return out


def _own(tail: Int16Array) -> Int16Array:
    """A tail kept for a later take, as an array of its own: as a view it would keep the
    whole array it was cut from alive, and a step that catches up decodes seconds of a
    stream at once (400 calls held 30 KB a stream that way in a behind worker)."""
    return tail.copy()


_NO_SAMPLES: Int16Array = np.zeros(0, dtype=np.int16)


class _Span:
    """Contiguous decoded audio of one run, resampled as one signal while it grows.

    The resampler is zero-phase with a finite support, so all output but the last
    ``margin`` input samples can be produced as the span grows, and equals what one
    resampling of the whole span would give; the rest waits for more input or the
    span's end (where, as for a whole span, the signal is padded with zeros).
    """

    __slots__ = ("_buf", "_buf_start", "_done", "_parts", "_total", "end_ts", "out_pos",
                 "rate")

    def __init__(self, ts_ext: int, rate: int, out_pos: int) -> None:
        self.rate = rate
        self.end_ts = ts_ext
        self.out_pos = out_pos
        self._parts: list[Int16Array] = []
        self._buf: Int16Array = np.zeros(0, dtype=np.int16)
        self._buf_start = 0
        self._done = 0
        self._total = 0

    def end_pos(self, out_rate: int) -> int:
        """Output position just after the last sample this span has input for."""
        return self.out_pos + (self._total - self._done) * out_rate // self.rate

    def add(self, samples: Int16Array, clock_len: int) -> None:
        self._parts.append(samples)
        self._total += samples.size
        self.end_ts += clock_len

    def render(self, canvas: _Canvas, out_rate: int, *, final: bool) -> None:
        if self._parts:
            pieces = [self._buf, *self._parts] if self._buf.size else self._parts
            self._buf = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
            self._parts = []
        # _buf now holds input [total - len(_buf), total)
        self._buf_start = self._total - self._buf.size
        if self.out_pos < canvas.base and canvas.base > canvas.floor:
            # Emitted already (the sender's clock is slow, or the packets came late):
            # go on from where the output is, rather than losing the rest of the span.
            canvas.shifted_samples += canvas.base - self.out_pos
            self.out_pos = canvas.base
        if self.rate == out_rate:
            fresh = self._buf[self._done - self._buf_start:]
            canvas.place(self.out_pos, fresh)
            self.out_pos += fresh.size
            self._done = self._total
            self._buf = _NO_SAMPLES  # not a view of the old: the canvas holds what it needs
            self._buf_start = self._total
            return
        g = math.gcd(self.rate, out_rate)
        up, down = out_rate // g, self.rate // g
        margin = _stream_margin(up, down)
        limit = self._total if final else (self._total - margin) // down * down
        if limit <= self._done:
            return
        start = max(self._done - margin, 0)
        stop = self._total if final else limit + margin
        window = self._buf[start - self._buf_start : stop - self._buf_start]
        values = resample(window, self.rate, out_rate)
        first = (self._done - start) * up // down
        last = (limit - start) * up // down if not final else values.size
        chunk = values[first:last]
        canvas.place(self.out_pos, chunk)
        self.out_pos += chunk.size
        self._done = limit
        keep_from = max(self._done - margin, 0)
        if keep_from > self._buf_start:
            self._buf = self._buf[keep_from - self._buf_start:].copy()
            self._buf_start = keep_from


def _stream_margin(up: int, down: int) -> int:
    """Input samples either side that a windowed resampling needs to be exact."""
    half = _TAPS_PER_SIDE * max(up, down)
    need = half // up + 2
    return (need + down - 1) // down * down


class SeqWindow:
    """Which extended sequence numbers of a run were taken in, near its newest one.

    A packet is only ever compared within MAX_SEQ_JUMP of the run's highest sequence
    number (``Run.fit``), so a ring of bits over the last ``SIZE`` numbers answers
    exactly what a set of every number did, in 512 bytes instead of a set that grew
    to thousands of ints (about 0.4 MB a call a minute in; the memory target is
    200 KB a call).
    """

    SIZE: Final = 4096  # a power of two above MAX_SEQ_JUMP + 1 (Final: compiled, a class constant)
    __slots__ = ("_bits", "_top")

    def __init__(self) -> None:
        self._bits = bytearray(self.SIZE // 8)
        self._top: int | None = None  # the highest number added

    def __contains__(self, seq: int) -> bool:
        top = self._top
        if top is None or seq > top or seq <= top - self.SIZE:
            return False
        index = seq & (self.SIZE - 1)
        return bool(self._bits[index >> 3] & (1 << (index & 7)))

    def add(self, seq: int) -> None:
        self.add_range(seq, seq)

    def add_range(self, first: int, last: int) -> None:
        """Mark ``first`` to ``last`` (inclusive) as taken in."""
        bits, top = self._bits, self._top
        if top is None or last - top >= self.SIZE:
            self._bits = bits = bytearray(self.SIZE // 8)
        elif last > top:
            _fill_ring(bits, top + 1, last, False)  # slots that newer numbers take over
        if top is None or last > top:
            self._top = top = last
        _fill_ring(bits, max(first, top - self.SIZE + 1), last, True)


def _fill_ring(bits: bytearray, first: int, last: int, value: bool) -> None:
    """Set (or clear) the ring slots of ``first`` to ``last`` (inclusive, at most the
    ring's size): a byte at a time with a mask, so a step's run of numbers costs a few
    operations, not a Python loop per number."""
    size = len(bits) * 8
    while first <= last:
        lo = first % size
        hi = min(lo + last - first, size - 1)  # up to the ring's end; the rest wraps
        first += hi - lo + 1
        while lo <= hi:
            stop = min(hi, lo | 7)  # the last slot of lo's byte in the range
            mask = ((1 << (stop - lo + 1)) - 1) << (lo & 7)
            if value:
                bits[lo >> 3] |= mask
            else:
                bits[lo >> 3] &= ~mask & 0xFF
            lo = stop + 1


@dataclass(slots=True)
class _LiveRun:
    """A run followed packet by packet, without keeping its packets."""

    run: Run
    ts0: int
    seen: SeqWindow = field(default_factory=lambda: SeqWindow())
    min_seq: int = 0
    unique: int = 0
    anchor_all: float = math.inf
    anchor_audio: float = math.inf
    dtmf: dict[tuple[int, int], int] = field(default_factory=dict)
    heap: list[tuple[int, float, int, str, bytes]] = field(default_factory=list)
    last_decoded: int | None = None
    decoders: _Decoders = field(default_factory=lambda: _Decoders())
    span: _Span | None = None
    last_arrival: float = 0.0
    ordered: bool = True  # ``heap`` is a sorted list (entries came in sequence order)

    @property
    def anchor(self) -> float:
        """Wall time (ms) of ``ts0``: the least delayed audio packet's, as in anchor_ms."""
        if self.anchor_audio != math.inf:
            return self.anchor_audio
        return self.anchor_all if self.anchor_all != math.inf else 0.0


class StreamTimeline:
    """One stream's channel, built as its packets arrive, in bounded memory.

    The same rules as a whole-call build (runs, duplicates, loss, anchoring on the
    least delayed packet, placement by timestamp, "later wins", DTMF as events), with
    two bounds that make it streamable: packets are decoded in sequence order once
    they are ``reorder_ms`` old (a packet overtaken by a later one that was already
    decoded is late and dropped), and output before the emitted point is final.
    With no bounds (``advance(None)``), the result equals the whole-call build.
    """

    def __init__(self, payload_codecs: dict[int, str], out_rate: int = 16000,
                 end_ms: int | None = None, start_sample: int = 0) -> None:
        if out_rate <= 0:
            raise ValueError(f"invalid output rate {out_rate}")
        self.out_rate = out_rate
        self.end_ms = end_ms
        self.stats = StreamStats()
        self.packets_late = 0
        self.canvas = _Canvas(start_sample)
        self._codecs: dict[int, str] = {}
        self.set_codecs(payload_codecs)
        self._pending: list[tuple[float, int, RtpRecord]] = []
        self._counter = 0
        self._pending_newest = -math.inf  # no pending entry arrived later than this
        # Every entry was appended in order (the usual case, records come from a
        # segment file in arrival order): the heap is a sorted list, taken by slicing.
        self._pending_sorted = True
        self._runs: list[_LiveRun] = []
        self._by_ssrc: dict[int, list[_LiveRun]] = {}
        self._last_ssrc: int | None = None
        self._seen_codecs: set[str] = set()
        self._unknown_pts: set[int] = set()
        self._dtmf: list[DtmfEvent] = []
        self._has_rtp = False
        self._first: float | None = None
        self._last: float | None = None

    def set_codecs(self, payload_codecs: dict[int, str]) -> None:
        """Static payload types plus the call's mappings (an SDP's own rtpmap wins)."""
        codecs = dict(STATIC_PAYLOAD_CODECS)
        codecs.update({int(pt): normalize_codec(str(name)) for pt, name in payload_codecs.items()})
        self._codecs = codecs

    # ---- input

    def feed(self, arrival_ms: float, data: bytes) -> None:
        """One stored datagram (arrival relative to the recording start)."""
        self.feed_many(((arrival_ms, data),))

    def feed_many(self, records: Iterable[tuple[float, bytes]]) -> None:
        """:meth:`feed` for each stored datagram, in order (fewer calls)."""
        received = 0
        for arrival_ms, data in records:
            received += 1
            try:
                arrival = float(arrival_ms)
                datagram = data if type(data) is bytes else bytes(data)
                self._admit(arrival, _parse_at(arrival, datagram, 0, len(datagram)))
            except (TypeError, ValueError, OverflowError):
                self.stats.packets_invalid += 1
        self.stats.packets_received += received

    def feed_segment(self, data: bytes, until_ms: float,
                     last_arrival: float) -> tuple[int, float]:
        """:meth:`feed_many` on the records at the start of segment bytes ``data``, read
        in place: no list of records, no copy of each datagram (the live step's reader,
        SegmentTail, hands its reads here). The records are laid out as segments.py
        writes them (``RECORD_HEADER``). Stops at a record ``data`` holds only part of,
        and after the first record that arrived later than both ``last_arrival`` and
        ``until_ms``. Returns the offset after the last record taken in and the newest
        arrival seen."""
        record_header = RECORD_HEADER.unpack_from
        header_size: int = RECORD_HEADER.size
        size = len(data)
        pos = 0
        received = 0
        while pos + header_size <= size:
            arrival_ms, length = record_header(data, pos)
            first = pos + header_size
            stop = first + length
            if stop > size:
                break  # still being written, or torn: the caller decides
            pos = stop
            received += 1
            arrival = float(arrival_ms)
            self._admit(arrival, _parse_at(arrival, data, first, stop))
            if arrival > last_arrival:
                last_arrival = arrival
                if arrival > until_ms:
                    break
        self.stats.packets_received += received
        return pos, last_arrival

    def _admit(self, arrival: float, rec: RtpRecord | None) -> None:
        """Count one stored datagram and keep it if it is media inside the recording:
        appended to the pending heap while arrivals come in order (it stays a heap, as
        they do from a segment file), pushed otherwise."""
        if rec is None:
            self.stats.packets_invalid += 1
        elif arrival < 0.0 or (self.end_ms is not None and arrival >= self.end_ms):
            self.stats.packets_outside += 1
        elif arrival >= self._pending_newest:
            self._pending.append((arrival, self._counter, rec))
            self._pending_newest = arrival
            self._counter += 1
        else:
            heapq.heappush(self._pending, (arrival, self._counter, rec))
            self._pending_sorted = False
            self._counter += 1

    def advance(self, now_ms: float | None, *, reorder_ms: float = 0.0,
                emit_sample: int | None = None) -> None:
        """Take in what arrived up to ``now_ms`` and decode what is ``reorder_ms`` old.

        ``None`` takes in and decodes everything (the end of the recording). Spans
        that would still have output before ``emit_sample`` are closed first, so what
        the caller then takes up to there is complete.
        """
        pending = self._pending
        ready: list[RtpRecord]
        if self._pending_sorted:
            # Sorted by (arrival, counter): the heap's pop order, taken in one slice.
            count = len(pending) if now_ms is None else bisect.bisect_right(
                pending, now_ms, key=_arrival_key)
            ready = [entry[2] for entry in pending[:count]]
            del pending[:count]
        else:
            ready = []
            while pending and (now_ms is None or pending[0][0] <= now_ms):
                ready.append(heapq.heappop(pending)[2])
        if not pending:
            self._pending_sorted = True
        end_ms = self.end_ms
        if end_ms is not None and ready and ready[-1].arrival_ms >= end_ms:
            kept = [rec for rec in ready if rec.arrival_ms < end_ms]
            self.stats.packets_outside += len(ready) - len(kept)
            ready = kept
        index = 0
        while index < len(ready):
            taken = self._ingest_continuing(ready, index)
            if taken == index:
                self._ingest(ready[index])
                taken += 1
            index = taken
        horizon = None if now_ms is None else now_ms - reorder_ms
        for live in self._runs:
            self._decode(live, horizon)
            if live.span is not None:
                final = now_ms is None or (
                    emit_sample is not None
                    and live.span.end_pos(self.out_rate) < emit_sample
                    and (not live.heap or horizon is None or live.heap[0][1] >= horizon))
                live.span.render(self.canvas, self.out_rate, final=final)
                if final:
                    live.span = None
        self._retire()

    def take(self, upto: int) -> Int16Array:
        """The channel's samples from the last take up to sample ``upto`` (final)."""
        return self.canvas.take(upto)

    def finish(self, duration_ms: int) -> ChannelResult:
        """Decode the rest and return the remaining samples up to ``duration_ms``."""
        self.end_ms = duration_ms
        self.advance(None)
        total = max(int(duration_ms), 0) * self.out_rate // 1000
        samples = self.take(total)
        return ChannelResult(samples=samples, stats=self.summary(), dtmf=self.dtmf(),
                             first_arrival_ms=None if self._first is None else int(self._first),
                             last_arrival_ms=None if self._last is None else int(self._last))

    def summary(self) -> StreamStats:
        """The counters so far (complete once :meth:`finish` ran)."""
        stats = self.stats
        out = replace(stats)  # a copy: the counters go on
        out.packets_lost += sum(_run_lost(live) for live in self._runs)
        out.codecs = sorted(self._seen_codecs)
        out.unknown_payload_types = sorted(self._unknown_pts)
        out.silent_reason = silent_reason(out, has_rtp=self._has_rtp,
                                          has_dtmf=bool(self.dtmf()))
        return out

    def dtmf(self) -> list[DtmfEvent]:
        events = list(self._dtmf)
        for live in self._runs:
            events.extend(_run_dtmf(live))
        events.sort(key=lambda e: (e.start_ms, e.digit))
        return events

    # ---- steps

    def _ingest(self, rec: RtpRecord) -> None:
        self._has_rtp = True
        self._first = rec.arrival_ms if self._first is None else min(self._first, rec.arrival_ms)
        self._last = rec.arrival_ms if self._last is None else max(self._last, rec.arrival_ms)
        codec = self._codecs.get(rec.pt)
        if codec is None:
            self._unknown_pts.add(rec.pt)
        else:
            self._seen_codecs.add(codec)
        audio = codec in _NATIVE_RATE
        candidates = self._by_ssrc.setdefault(rec.ssrc, [])
        target: _LiveRun | None = None
        ext: tuple[int, int] | None = None
        for live in reversed(candidates[-_RUN_LOOKBACK:]):
            ext = live.run.fit(rec.seq, rec.ts, rec.arrival_ms, audio)
            if ext is not None:
                target = live
                break
        if target is None or ext is None:
            target = _LiveRun(Run(ssrc=rec.ssrc), ts0=rec.ts, min_seq=rec.seq)
            candidates.append(target)
            self._runs.append(target)
            if self._last_ssrc is not None and self._last_ssrc != rec.ssrc:
                self.stats.ssrc_changes += 1
            self._last_ssrc = rec.ssrc
            ext = (rec.seq, rec.ts)
        seq_ext, ts_ext = ext
        target.run.add(RunPacket(seq_ext, ts_ext, rec.arrival_ms, codec, b""), audio, keep=False)
        target.last_arrival = rec.arrival_ms
        if seq_ext in target.seen:
            self.stats.packets_duplicate += 1
            return
        target.seen.add(seq_ext)
        target.unique += 1
        target.min_seq = min(target.min_seq, seq_ext)
        offset = rec.arrival_ms - (ts_ext - target.ts0) * (1000.0 / RTP_CLOCK_HZ)
        target.anchor_all = min(target.anchor_all, offset)
        if codec == _DTMF:
            parsed = parse_telephone_event(rec.payload)
            if parsed is None:
                self.stats.unknown_payload += 1
            elif parsed[0] < len(_DTMF_DIGITS):
                key = (ts_ext, parsed[0])
                if key in target.dtmf or len(target.dtmf) < _MAX_DTMF_EVENTS:
                    target.dtmf[key] = max(target.dtmf.get(key, 0), parsed[2])
        elif not audio:
            self.stats.unknown_payload += 1
        else:
            target.anchor_audio = min(target.anchor_audio, offset)
            if rec.payload:
                assert codec is not None
                entry = (seq_ext, rec.arrival_ms, ts_ext, codec, rec.payload)
                if target.heap and entry < target.heap[-1]:
                    target.ordered = False
                heapq.heappush(target.heap, entry)

    def _ingest_continuing(self, recs: list[RtpRecord], index: int) -> int:
        """Take in, from ``recs[index]`` on, the packets that simply continue their run.

        The common case, in one go: audio of the SSRC and payload type of the run
        that the packet at ``index`` would join first, each the next sequence number
        and within the clock check of the one before (exactly what :meth:`_ingest`
        decides for them: they join that run, are no duplicates, and only move its
        references). Returns the index of the first packet not taken (``index``
        when that one needs the general path).
        """
        first = recs[index]
        codec = self._codecs.get(first.pt)
        if codec not in _NATIVE_RATE:
            return index
        candidates = self._by_ssrc.get(first.ssrc)
        if not candidates:
            return index
        live = candidates[-1]
        run = live.run
        if run.ref_arrival_ms is None:
            return index
        ssrc, pt, ts0 = first.ssrc, first.pt, live.ts0
        seq = run.max_seq_ext
        first_seq = seq + 1
        ref_arrival = run.ref_arrival_ms
        ref_ts = run.ref_ts_ext
        max_ts = run.max_ts_ext
        anchor = math.inf
        lo = hi = first.arrival_ms
        scale = 1000.0 / RTP_CLOCK_HZ
        entries: list[tuple[int, float, int, str, bytes]] = []
        append = entries.append
        end = len(recs)
        stop = index
        while stop < end:
            arrival, rec_ssrc, rec_seq, rec_ts, rec_pt, payload = recs[stop]
            if (rec_ssrc != ssrc or rec_pt != pt or not payload
                    or rec_seq != (seq + 1) & 0xFFFF):
                break
            delta = ((rec_ts - ref_ts + 0x80000000) & 0xFFFFFFFF) - 0x80000000  # unwrap
            skew = (arrival - ref_arrival) - delta * 1000.0 / RTP_CLOCK_HZ
            if skew > MAX_CLOCK_SKEW_MS or skew < -MAX_CLOCK_SKEW_MS:
                break
            seq += 1
            ref_ts += delta
            ref_arrival = arrival
            if ref_ts > max_ts:
                max_ts = ref_ts
            offset = arrival - (ref_ts - ts0) * scale
            if offset < anchor:
                anchor = offset
            if arrival < lo:
                lo = arrival
            elif arrival > hi:
                hi = arrival
            append((seq, arrival, ref_ts, codec, payload))
            stop += 1
        count = stop - index
        if not count:
            return index
        self._has_rtp = True
        self._first = lo if self._first is None else min(self._first, lo)
        self._last = hi if self._last is None else max(self._last, hi)
        self._seen_codecs.add(codec)
        run.count += count
        run.max_seq_ext = seq
        run.max_ts_ext = max_ts
        run.ref_arrival_ms = ref_arrival
        run.ref_ts_ext = ref_ts
        live.last_arrival = ref_arrival
        live.seen.add_range(first_seq, seq)
        live.unique += count
        live.anchor_all = min(live.anchor_all, anchor)
        live.anchor_audio = min(live.anchor_audio, anchor)
        # Each sequence number is above everything in the heap: appended in order,
        # the heap stays a heap.
        live.heap.extend(entries)
        return stop

    def _decode(self, live: _LiveRun, horizon: float | None) -> None:
        heap = live.heap
        entries: list[tuple[int, float, int, str, bytes]]
        if live.ordered:
            # A sorted list (the usual case): the heap's pop order, taken in one slice.
            count = len(heap)
            if horizon is not None:
                count = 0
                for entry in heap:
                    if entry[1] >= horizon:
                        break
                    count += 1
            entries = heap[:count]
            del heap[:count]
        else:
            entries = []
            while heap and (horizon is None or heap[0][1] < horizon):
                entries.append(heapq.heappop(heap))
        if not heap:
            live.ordered = True
        if not entries:
            return
        to_out = self.out_rate / RTP_CLOCK_HZ
        table: Int16Array = PCMU_DECODE_TABLE
        tables = _G711_TABLES
        gathered: list[bytes] = []  # G.711 payloads continuing live.span, not decoded yet
        gathered_end = 0  # the span's end timestamp once they are
        # Counters and the last sequence number kept in locals for the loop (written
        # back after it: nothing it calls reads them).
        last_decoded = live.last_decoded
        decoded = late = 0
        for seq_ext, _, ts_ext, codec, payload in entries:
            if last_decoded is not None and seq_ext <= last_decoded:
                late += 1  # overtaken beyond the reorder window
                continue
            last_decoded = seq_ext
            codec_table = tables.get(codec)
            if gathered:
                if codec_table is table and ts_ext == gathered_end:
                    gathered.append(payload)  # continues the span: decoded with the others
                    gathered_end += len(payload)
                    decoded += 1
                    continue
                _add_g711(live, table, gathered)
                gathered = []
            if codec_table is not None:
                # G.711 (one sample per byte and clock tick, never undecodable): the
                # payloads that continue the span are decoded by one table lookup.
                decoded += 1
                self._span_for(live, ts_ext, RTP_CLOCK_HZ, to_out)
                table = codec_table
                gathered = [payload]
                gathered_end = ts_ext + len(payload)
                continue
            samples = live.decoders.decode(codec, payload)
            if samples is None or samples.size == 0:
                self.stats.unknown_payload += 1
                continue
            decoded += 1
            rate = _NATIVE_RATE[codec]
            clock_len = samples.size * RTP_CLOCK_HZ // rate
            self._span_for(live, ts_ext, rate, to_out).add(samples, clock_len)
        if gathered:
            _add_g711(live, table, gathered)
        live.last_decoded = last_decoded
        self.stats.packets_decoded += decoded
        self.packets_late += late

    def _span_for(self, live: _LiveRun, ts_ext: int, rate: int, to_out: float) -> _Span:
        """The span a packet at ``ts_ext`` continues, or a new one (the old one rendered)."""
        span = live.span
        if span is None or ts_ext != span.end_ts or rate != span.rate:
            if span is not None:
                span.render(self.canvas, self.out_rate, final=True)
            offset = round(live.anchor * self.out_rate / 1000.0) + round(
                (ts_ext - live.ts0) * to_out)
            span = _Span(ts_ext, rate, offset)
            live.span = span
        return span

    def _retire(self) -> None:
        """Fold runs that no packet can join any more into the totals (bounded memory)."""
        if len(self._runs) <= _RUN_LOOKBACK:
            return
        keep: list[_LiveRun] = []
        for live in self._runs:
            recent = self._by_ssrc.get(live.run.ssrc, [])[-_RUN_LOOKBACK:]
            if live.span is None and not live.heap and not any(r is live for r in recent):
                self.stats.packets_lost += _run_lost(live)
                self._dtmf.extend(_run_dtmf(live))
                self._by_ssrc[live.run.ssrc].remove(live)
            else:
                keep.append(live)
        self._runs = keep


def _arrival_key(entry: tuple[float, int, RtpRecord]) -> float:
    return entry[0]


def _add_g711(live: _LiveRun, table: Int16Array, payloads: list[bytes]) -> None:
    """Decode G.711 payloads that continue ``live.span`` in one lookup and add them."""
    assert live.span is not None
    samples = table.take(np.frombuffer(b"".join(payloads), dtype=np.uint8))  # [] costs 2x
    live.span.add(samples, samples.size)


def _run_lost(live: _LiveRun) -> int:
    if not live.unique:
        return 0
    return live.run.max_seq_ext - live.min_seq + 1 - live.unique


def _run_dtmf(live: _LiveRun) -> list[DtmfEvent]:
    scale = 1000.0 / RTP_CLOCK_HZ
    anchor = live.anchor
    return [
        DtmfEvent(digit=_DTMF_DIGITS[code], start_ms=round(anchor + (ts_ext - live.ts0) * scale),
                  duration_ms=round(duration * scale))
        for (ts_ext, code), duration in live.dtmf.items()
    ]


def build_channel(
    records: Iterable[tuple[int, bytes]],
    payload_codecs: dict[int, str],
    duration_ms: int,
    out_rate: int = 16000,
) -> ChannelResult:
    """Build one channel of ``duration_ms`` at ``out_rate`` from stored RTP, in one go.

    ``records`` are ``(arrival_ms relative to the recording start, datagram)``.
    ``payload_codecs`` is every payload-type mapping the call negotiated; the
    static payload types of :data:`STATIC_PAYLOAD_CODECS` are decoded even when
    the negotiation did not list them (an SDP's own rtpmap still wins). The same
    :class:`StreamTimeline` the live encoder uses, without its time bounds.
    """
    timeline = StreamTimeline(payload_codecs, out_rate, end_ms=max(int(duration_ms), 0))
    for arrival, data in records:
        timeline.feed(arrival, data)
    return timeline.finish(duration_ms)
