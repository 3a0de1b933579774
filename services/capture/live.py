"""The live recording: the call encoded into its final Ogg/Opus file while it goes on.

Every flush of the segments (0.5 s), the live encoder reads the packets appended
since the last step, builds each stream's channel up to a point a little behind
(``EMIT_DELAY_MS``: time for reordered packets), mixes the streams into the two
channels, encodes that span and appends its Ogg pages to ``live.opus``, so the file
always ends on a complete page and any prefix that ends on a page boundary is a
playable recording of the call so far.

Finalize is the same step run to the end of the call plus closing the stream, so
it costs the last half second of audio, not the whole call, and memory does not
grow with the call's length. After a crash the encoder starts again from the
segments (the source of truth): it keeps ``live.opus`` up to its last complete
page (peers may already hold those bytes) and continues the same Ogg stream from
there, reading the segments in bounded pieces.

The receive path is untouched: it only appends to segments; this runs in a worker
thread of capture (see service.py) on what the segments already hold.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

from callrec.audio import (
    OggPageInfo,
    OpusPageEncoder,
    iter_decoded,
    opus_input_rate,
    scan_ogg_pages,
)
from callrec.config import NodeConfig
from callrec.opus import OpusMode
from callrec.waveform import PeakAccumulator, peaks_of_chunks
from contracts.v1.events import ChannelSummary, DtmfDigit, WaveformPeaks

from .segments import split_records, stream_segments
from .timeline import DtmfEvent, Int16Array, StreamStats, StreamTimeline, native_rate

NARROWBAND_RATE = 8000
WIDEBAND_RATE = 16000

OPUS_COMPLEXITY = 0
"""libopus' cheapest setting. In SILK complexity 3 and up cost about 3x the CPU on
narrowband speech for a few hundredths of STOI (bench/encode_cost.py); in CELT at 11.5
kbit/s complexity 2 cost 1.1-1.3x and scored lower (STOI 0.83, bench/opus_settings.py)."""

OPUS_BITRATE: int = NodeConfig.model_fields["opus_bitrate"].default
"""Both channels together (5.75 kbit/s each at 11.5 kbit/s, CELT narrowband), the node's
default: 5.25 MB per call-hour when both parties make sound all the time (the
benchmark's two tones, no frame lost), 4.85 with speech on both sides (STOI 0.86-0.87,
ESTOI 0.79), 3.1 on a conversation where one party talks at a time (VBR: silence costs
almost nothing); issue 11 asks for at most 5.4 with STOI >= 0.85 (bench/opus_settings.py).
``--opus-bitrate 16000`` stores 7.4 MB/h of tones at speech STOI 0.90-0.91.

Until 2026-12-02 the default was 16 kbit/s in SILK (libopus' own choice at 8 kHz): 7.5
MB/h, STOI 0.94, but about twice CELT's CPU. SILK reaches no 5.4 MB/h on the tones with
STOI >= 0.85: from about 10.3 to 12 kbit/s it spends 5.75-5.9 MB/h on them whatever the
target, below that speech falls to STOI 0.77-0.83, and at 12 kbit/s and complexity 0 a
steady tone loses single 20 ms frames once SILK's noise estimate has adapted (after
6-10 s). CBR, constrained VBR, SIGNAL_VOICE, LSB depth, a narrowband cap, FEC / loss /
DTX off and 120 ms packets did not change that."""

NARROWBAND_MODE: OpusMode = NodeConfig.model_fields["opus_mode"].default
"""How a narrowband recording is coded by default (callrec/opus.py OpusMode says why
CELT); ``--opus-mode auto`` keeps libopus' choice (SILK), which at 16 kbit/s and up
scores higher for the same bytes (STOI 0.94 against CELT's 0.90 at 16k)."""

WIDEBAND_MIN_BITRATE = 16000
"""A wideband (G.722) recording gets at least this: below 8 kbit/s a channel libopus
falls back to a narrower band, and the upper band was the point of G.722."""

OPUS_FRAME_MS = 60
"""Opus' longest frame (in CELT three 20 ms frames in one packet): fewer packets (less
TOC and Ogg lacing overhead, fewer encoder calls). Latency does not matter for a
recording."""
LIVE_FILE = "live.opus"
FINAL_STATE = "final.json"

REORDER_MS = 150.0
"""A packet is decoded (in sequence order) once it is this old: reordering window."""

EMIT_DELAY_MS = 300.0
"""Audio is encoded up to this far behind the newest stored packet; the margin over
REORDER_MS absorbs jitter of the least delayed packet."""

CATCH_UP_STEP_MS = 2_000.0
"""While catching up (after a restart, at finalize) segments are read this much call
time at a time, which bounds memory whatever the call's length."""

READ_CHUNK = 128 * 1024  # more than the largest record (6 + 65535 bytes)
FIRST_READ = 16 * 1024
"""What a read asks for first: a step's new records (about 4.5 KB a stream per 0.5 s of
G.711) fit, where a READ_CHUNK read copies (and allocates) 128 KiB to parse a few of
them whenever the segment holds more than the step takes (catching up, a benchmark)."""
_EOS = 4
_EMIT_SECONDS = 2  # call time mixed and encoded at a time


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """What the encoder needs to know of one stream (a snapshot of its manifest)."""

    stream_id: str
    channel: int
    payload_codecs: dict[int, str]
    port: int = 0


@dataclass(frozen=True, slots=True)
class Progress:
    """How far ``live.opus`` is: a prefix of ``bytes`` holds ``duration_ms`` of audio."""

    bytes: int
    duration_ms: int
    final: bool


class SegmentTail:
    """Reads one stream's segment files incrementally, record by record.

    A record still being written (the capture loop appends while we read) is left
    for the next read; a torn record that ends a file whose successor exists (a
    crash) is skipped, as read_records does. The file being read stays open between
    reads and the directory is listed again only when it has nothing new (a newer
    segment can only appear then: one process writes one segment file at a time),
    so a step of a busy call costs one pread per stream.
    """

    def __init__(self, directory: Path, stream_id: str) -> None:
        self.directory = directory
        self.stream_id = stream_id
        self._paths: list[Path] = []  # the stream's segment files known so far, in order
        self._index = 0  # the one being read
        self._offset = 0
        self._handle: BinaryIO | None = None
        self.last_arrival = -1.0

    def read(self, until_ms: float | None) -> list[tuple[int, bytes]]:
        """Records appended since the last read, stopping after one beyond ``until_ms``."""
        out: list[tuple[int, bytes]] = []

        self._take(lambda data, until, last: split_records(data, out, until, last), until_ms)
        return out

    def feed(self, timeline: StreamTimeline, until_ms: float | None) -> None:
        """:meth:`read` straight into ``timeline``, record by record in place (the live
        step's path: no list of records, no copy of each datagram)."""
        self._take(timeline.feed_segment, until_ms)

    def _take(self, consume: _Consume, until_ms: float | None) -> None:
        if until_ms is not None and self.last_arrival > until_ms:
            return  # already ahead: what was read is waiting in the timeline
        until = math.inf if until_ms is None else until_ms
        listed = False
        taken = False
        while True:
            if self._index >= len(self._paths):
                if listed:
                    return
                self._relist()
                listed = True
                continue
            done, took = self._take_file(consume, until)
            taken = taken or took
            if done:
                return  # until_ms reached
            if self._index < len(self._paths) - 1:
                self._next_file()  # a complete predecessor: its torn tail, if any, skipped
            elif listed or taken:
                return  # the newest file has no more for now
            else:
                self._relist()  # nothing new: has a newer segment appeared?
                listed = True

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _relist(self) -> None:
        current = self._paths[self._index] if self._index < len(self._paths) else None
        self._paths = stream_segments(self.directory, self.stream_id)
        if current is not None and current in self._paths:
            self._index = self._paths.index(current)

    def _next_file(self) -> None:
        self.close()
        self._index += 1
        self._offset = 0

    def _take_file(self, consume: _Consume, until: float) -> tuple[bool, bool]:
        """Hand the complete records of the current file to ``consume``: (past ``until``,
        took any)."""
        if self._handle is None:
            try:
                self._handle = self._paths[self._index].open("rb", buffering=0)
            except FileNotFoundError:  # removed under us (released): nothing more there
                return False, False
        fd = self._handle.fileno()
        chunk = FIRST_READ
        took = False
        while True:
            data = os.pread(fd, chunk, self._offset)
            if not data:
                return False, took
            end = len(data)
            pos, self.last_arrival = consume(data, until, self.last_arrival)
            if pos == 0 and end >= chunk:
                if chunk < READ_CHUNK:
                    chunk = READ_CHUNK  # a record larger than the first read: read it whole
                    continue
                pos = end  # a record larger than READ_CHUNK cannot be: skip
            took = took or pos > 0
            self._offset += pos
            if self.last_arrival > until:
                return True, took
            if end < chunk:
                return False, took


_Consume = Callable[[bytes, float, float], tuple[int, float]]
"""Takes in the complete records at the start of a read, given the time to stop after
and the newest arrival so far: (the offset after them, the newest arrival)."""


def encoding_bitrate(rate: int, configured: int) -> int:
    """The Opus bitrate (both channels) for a recording encoded at ``rate``."""
    return max(configured, WIDEBAND_MIN_BITRATE) if rate > NARROWBAND_RATE else configured


def encoding_mode(rate: int, narrowband: OpusMode = NARROWBAND_MODE) -> OpusMode:
    """``narrowband`` (the node's --opus-mode) for narrowband; a wideband recording lets
    libopus choose (SILK wideband at 16 kbit/s), CELT's upper band at 8 kbit/s a channel
    being untested here."""
    return "auto" if rate > NARROWBAND_RATE else narrowband


def encoding_rate(streams: Iterable[StreamSpec]) -> int:
    """The rate a recording is encoded at: narrowband when no negotiated codec is wider.

    Telephony G.711 and G.729 carry nothing above 4 kHz: encoding them at 16 kHz only
    doubles the work (resampling, mixing, and libopus coding an empty upper band).
    A G.722 stream keeps its band. The rate is chosen once, when the first codec is
    known, and kept (a resumed file goes on at its OpusHead's rate): a wideband codec
    negotiated later, or a static G.722 nobody offered, is resampled down.
    """
    for spec in streams:
        for name in spec.payload_codecs.values():
            rate = native_rate(str(name))
            if rate is not None and rate > NARROWBAND_RATE:
                return WIDEBAND_RATE
    return NARROWBAND_RATE


@dataclass
class _Stream:
    spec: StreamSpec
    tail: SegmentTail
    timeline: StreamTimeline
    channel: int


@dataclass
class FinalizeResult:
    """What finalize reports: the call's length, each stream's statistics and the
    waveform peaks of what was encoded (None from a final.json written before peaks)."""

    duration_ms: int
    channels: list[ChannelSummary]
    codecs: list[str]
    peaks: WaveformPeaks | None = None

    def to_json(self) -> str:
        return json.dumps({"duration_ms": self.duration_ms, "codecs": self.codecs,
                           "channels": [c.model_dump(mode="json") for c in self.channels],
                           "peaks": self.peaks.model_dump(mode="json") if self.peaks else None})

    @classmethod
    def from_json(cls, text: str) -> FinalizeResult:
        data = json.loads(text)
        peaks = data.get("peaks")
        return cls(duration_ms=int(data["duration_ms"]), codecs=list(data["codecs"]),
                   channels=[ChannelSummary.model_validate(c) for c in data["channels"]],
                   peaks=WaveformPeaks.model_validate(peaks) if peaks else None)


def channel_summary(spec: StreamSpec, stats: StreamStats,
                    dtmf: list[DtmfEvent]) -> ChannelSummary:
    """The ChannelSummary of one stream (its statistics and DTMF digits)."""
    return ChannelSummary(
        channel=0 if spec.channel <= 0 else 1,
        stream_id=spec.stream_id,
        port=spec.port,
        packets_received=stats.packets_received,
        packets_lost=stats.packets_lost,
        packets_duplicate=stats.packets_duplicate,
        packets_invalid=stats.packets_invalid,
        packets_outside=stats.packets_outside,
        unknown_payload=stats.unknown_payload,
        ssrc_changes=stats.ssrc_changes,
        codecs=list(stats.codecs),
        packets_decoded=stats.packets_decoded,
        unknown_payload_types=list(stats.unknown_payload_types),
        silent_reason=stats.silent_reason,
        dtmf=[DtmfDigit(digit=d.digit, at_ms=d.start_ms, duration_ms=d.duration_ms)
              for d in dtmf],
    )


class LiveEncoder:
    """One recording's live encoding: ``step`` while it goes on, ``finish`` at the end.

    Not thread-safe: the service runs every call of one recording on one worker thread.
    """

    def __init__(self, directory: Path, recording_id: str, *, bitrate: int = OPUS_BITRATE,
                 complexity: int = OPUS_COMPLEXITY, rate: int = NARROWBAND_RATE,
                 frame_ms: int = OPUS_FRAME_MS,
                 narrowband_mode: OpusMode = NARROWBAND_MODE) -> None:
        self.directory = directory
        self.recording_id = recording_id
        self.path = directory / LIVE_FILE
        self._bitrate = bitrate
        self._complexity = complexity
        self._streams: dict[str, _Stream] = {}
        self._unwritten = b""
        self._pending_result: FinalizeResult | None = None
        self.final: FinalizeResult | None = None
        _, resume = _last_pages(self.path)
        # Closed: the end-of-stream page is written. Never written again: the store may
        # hold the file already (by a link) and peers may have copied it.
        self.closed = resume is not None and bool(resume.flags & _EOS)
        if self.closed:
            self.final = _load_final(directory)
        if resume is not None and resume.sequence < 1:
            resume = None  # headers incomplete: nothing playable yet, start again
        if resume is None:
            self.bytes = 0
        else:  # a recording goes on at the rate it was started with
            self.bytes = resume.end
            rate = opus_input_rate(self.path) or rate
        self.rate = rate
        self._encoder = OpusPageEncoder(rate, bitrate=encoding_bitrate(rate, bitrate),
                                        complexity=complexity, frame_ms=frame_ms,
                                        mode=encoding_mode(rate, narrowband_mode),
                                        resume_from=resume)
        self._frame = self._encoder.frame_size
        if not self.closed:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o640)
            os.ftruncate(self._fd, self.bytes)
            os.lseek(self._fd, self.bytes, os.SEEK_SET)
        else:
            self._fd = -1
        self.cursor = self._encoder.samples_done
        self._t = 0.0  # call time (ms) up to which the segments have been taken in
        self._drained = False  # the last step encoded every packet it read: see `drained`
        # Waveform peaks of everything mixed, fed as it is encoded (no cost at finalize);
        # None: unknown (the web then computes them from the audio).
        self._peaks: PeakAccumulator | None = None
        if not self.closed:
            self._peaks = (PeakAccumulator(rate) if self.cursor == 0
                           else _peaks_of_prefix(self.path, self.cursor, rate))

    # ---- progress

    @property
    def drained(self) -> bool:
        """Another step would add nothing unless the segments grow: the last step
        encoded up to the newest packet it read (or the file is closed)."""
        return self.closed or self._drained

    @property
    def progress(self) -> Progress:
        duration = self.final.duration_ms if self.final is not None else (
            self._encoder.playable_ms)
        return Progress(self.bytes, duration, self.final is not None)

    # ---- steps

    def step(self, streams: list[StreamSpec], now_ms: float) -> Progress | None:
        """Encode what the segments hold up to ``now_ms`` (minus the reorder delay).

        Never further than the newest packet stored: a call on hold, or whose capture
        was down, gets its silence when packets come again or at finalize, so the
        file never runs past the end of the call. Returns the new progress when pages
        were appended, else None.
        """
        if self.closed:
            return None
        self._sync_streams(streams)
        before = self.bytes
        self._catch_up(now_ms)
        self._write(self._encoder.pages())
        if self.bytes == before:
            return None
        return self.progress

    def finish(self, streams: list[StreamSpec], duration_ms: int) -> FinalizeResult:
        """Encode the rest of the call, close the Ogg stream; idempotent once it succeeded."""
        if self.final is not None:
            return self.final
        self._sync_streams(streams)
        if self.closed:
            # final.json was lost (a machine crash kept the end page, not the file
            # written before it): the result is counted again, the file left as it is.
            result = self._recount(duration_ms)
            _save_final(self.directory, result)
            self.close()
            self.final = result
            return result
        if self._pending_result is not None:
            result = self._pending_result  # closed, but the last pages still to write
        else:
            end = max(duration_ms, 0)
            for stream in self._streams.values():
                stream.timeline.end_ms = end
            # Everything up to the end, read and encoded in bounded steps...
            self._catch_up(end + EMIT_DELAY_MS)
            self._pump(None)
            for stream in self._streams.values():
                stream.timeline.advance(None)
            # ...then the last samples (and the silence of a final hold), a piece at a time.
            # An Ogg file without audio packets cannot be opened again: an empty
            # recording becomes one sample of silence (as encode_opus_stereo does).
            total = max(end * self.rate // 1000, self.cursor, 1)
            self._emit(total, partial=True, write=True)
            peaks = self._peaks.result() if self._peaks is not None else None
            result = self._result(duration_ms, peaks)
            self._pending_result = result
            _save_final(self.directory, result)
            # The padded last frame and the encoder's flush on the end-of-stream page,
            # whose granule trims them (RFC 7845: within that page only).
            self._unwritten += self._encoder.close(total)
        self._write(b"")
        if self._unwritten:
            raise OSError(f"live recording {self.recording_id} could not be written")
        self.close()
        self.final = result
        return result

    def _result(self, duration_ms: int, peaks: WaveformPeaks | None) -> FinalizeResult:
        summaries: list[ChannelSummary] = []
        codecs: set[str] = set()
        for stream in self._sorted_streams():
            stats = stream.timeline.summary()
            summaries.append(channel_summary(stream.spec, stats, stream.timeline.dtmf()))
            codecs.update(stats.codecs)
        return FinalizeResult(duration_ms=duration_ms, channels=summaries,
                              codecs=sorted(codecs), peaks=peaks)

    def _recount(self, duration_ms: int) -> FinalizeResult:
        """The result of a closed file, from its segments (every packet read again,
        nothing encoded: the timelines start at the file's end) and its audio (the
        peaks, decoded from it)."""
        end = max(duration_ms, 0)
        for stream in self._streams.values():
            stream.timeline.end_ms = end
        self._pump(None)
        for stream in self._streams.values():
            stream.timeline.advance(None)
        # The call's samples, as the finish that closed the file counted them.
        accumulator = _peaks_of_prefix(self.path, max(end * self.rate // 1000, 1), self.rate)
        return self._result(duration_ms,
                            accumulator.result() if accumulator is not None else None)

    def close(self) -> None:
        """Let go of the file (the recording goes on elsewhere or is done)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        for stream in self._streams.values():
            stream.tail.close()
        self._encoder.release()

    # ---- internals

    def _sync_streams(self, streams: list[StreamSpec]) -> None:
        for spec in streams:
            current = self._streams.get(spec.stream_id)
            if current is None:
                # Output before the cursor is in live.opus already (a stream added
                # mid-call, or a restart): what lands there is dropped, not pushed later.
                timeline = StreamTimeline(spec.payload_codecs, self.rate,
                                          start_sample=self.cursor)
                self._streams[spec.stream_id] = _Stream(
                    spec, SegmentTail(self.directory, spec.stream_id), timeline,
                    0 if spec.channel <= 0 else 1)
            elif current.spec.payload_codecs != spec.payload_codecs:
                current.timeline.set_codecs(spec.payload_codecs)
                current.spec = spec

    def _sorted_streams(self) -> list[_Stream]:
        return sorted(self._streams.values(), key=lambda s: (s.spec.channel, s.spec.stream_id))

    def _catch_up(self, now_ms: float) -> None:
        """Take in and encode up to ``now_ms``, at most CATCH_UP_STEP_MS of call at a time."""
        t = self._t
        while True:
            t = max(min(t + CATCH_UP_STEP_MS, now_ms), self._t)
            self._t = t
            self._pump(t)
            newest = max((s.tail.last_arrival for s in self._streams.values()), default=-1.0)
            emit_ms = min(t - EMIT_DELAY_MS, newest)
            # Whole frames from the cursor (a file resumed from an encoder with another
            # frame size, e.g. one written before an upgrade, goes on from where it is).
            emit = self.cursor + (int(emit_ms * self.rate / 1000) - self.cursor) \
                // self._frame * self._frame
            for stream in self._streams.values():
                stream.timeline.advance(t, reorder_ms=REORDER_MS, emit_sample=emit)
            self._emit(emit, partial=False)
            if t >= now_ms:
                # Past the emit delay of the newest packet, everything read is decoded
                # (REORDER_MS < EMIT_DELAY_MS) and encoded but a partial last frame,
                # which only more packets or the finish complete.
                self._drained = t - EMIT_DELAY_MS >= newest
                return
            self._write(self._encoder.pages())  # catching up: pages out as they come

    def _pump(self, until_ms: float | None) -> None:
        for stream in self._streams.values():
            stream.tail.feed(stream.timeline, until_ms)

    def _emit(self, upto: int, *, partial: bool, write: bool = False) -> None:
        """Mix and encode [cursor, upto), a bounded piece at a time.

        Only whole Opus frames unless ``partial`` (the end of the call): the last
        frame is then padded with silence and the end granule trims it off, so its
        page is left to the encoder's close (the end-of-stream page), not written here.
        """
        while self.cursor < upto:
            piece = _EMIT_SECONDS * self.rate // self._frame * self._frame
            stop = min(upto, self.cursor + piece)
            left, right = self._mix(stop)
            if left.size % self._frame:
                if not partial:
                    raise ValueError("emit whole frames only")
                pad = self._frame - left.size % self._frame
                left = np.concatenate([left, np.zeros(pad, dtype=np.int16)])
                right = np.concatenate([right, np.zeros(pad, dtype=np.int16)])
                self._encoder.encode(left, right)
                return  # the last piece: its page ends the stream
            self._encoder.encode(left, right)
            if write:
                self._write(self._encoder.pages())

    def _mix(self, upto: int) -> tuple[Int16Array, Int16Array]:
        count = upto - self.cursor
        parts: tuple[list[Int16Array], list[Int16Array]] = ([], [])
        for stream in self._streams.values():
            parts[stream.channel].append(stream.timeline.take(upto))
        self.cursor = upto
        left, right = (_sum_channel(p, count) for p in parts)
        if self._peaks is not None:
            self._peaks.add(np.stack([left, right]))
        return left, right

    def _write(self, pages: bytes) -> None:
        """Append whole pages; on failure keep them for later.

        Not synced: peers that copy the file follow its page chain and start again when
        it breaks (an origin that lost the unsynced tail in a machine crash resumes from
        its last complete page and writes other bytes there), so a sync per step would
        buy nothing but cost. A finished recording is made durable by the store, which
        takes this file (linked in, or copied) and fsyncs it before its completion is
        published.
        """
        data = self._unwritten + pages
        if not data:
            return
        try:
            view = memoryview(data)
            written = 0
            while written < len(data):
                written += os.write(self._fd, view[written:])
        except OSError:
            # A file that ends mid-page would not be a valid prefix: cut it back.
            os.ftruncate(self._fd, self.bytes)
            os.lseek(self._fd, self.bytes, os.SEEK_SET)
            self._unwritten = data
            return
        self.bytes += len(data)
        self._unwritten = b""


def _sum_channel(parts: list[Int16Array], count: int) -> Int16Array:
    """``count`` samples of one channel: its streams added, clipped to int16. The
    usual one stream a channel is taken as it is (the same values, no int32 pass)."""
    if len(parts) == 1 and parts[0].size == count:
        return parts[0]
    mix = np.zeros(count, dtype=np.int32)
    for samples in parts:
        mix[: samples.size] += samples
    return np.clip(mix, -32768, 32767).astype(np.int16)


def _peaks_of_prefix(path: Path, samples: int, rate: int) -> PeakAccumulator | None:
    """Peaks of what live.opus already holds, for an encoder resumed after a restart:
    decoded once (about 3 ms of CPU per second of call), then fed on as usual. The
    decoder ends the encoder's look-ahead (6.5 ms) short: padded with silence. A prefix
    that does not decode gives no peaks (None), never a failed recording."""
    try:
        accumulator, taken = peaks_of_chunks(
            (c for c, _ in iter_decoded(path, rate)), rate, limit=samples)
    except Exception:  # any decoder error: the recording matters, its drawing does not
        return None
    if taken < samples:
        accumulator.add(np.zeros((2, samples - taken), dtype=np.int16))
    return accumulator


def _last_pages(path: Path) -> tuple[OggPageInfo | None, OggPageInfo | None]:
    """The last two complete pages of ``path`` (None where there are fewer)."""
    before: OggPageInfo | None = None
    last: OggPageInfo | None = None
    if not path.exists():
        return None, None
    for page in scan_ogg_pages(path):
        before, last = last, page
    return before, last


def _save_final(directory: Path, result: FinalizeResult) -> None:
    """Written before the end-of-stream page, whole or not at all (a rename): a finish
    retried after a failure later in finalize, or by a restarted capture, returns it.

    Not synced: a machine crash may keep the end page and lose this file, and a closed
    file's result is then counted again (`LiveEncoder._recount`). Its fsync was the
    worker's largest wait when many calls ended at once (each finish waited for a
    journal commit, one after another: about 1.5 s of 2.3 s per worker for 400 calls,
    bench/README.md "The finish's fsync")."""
    temp = directory / f".{FINAL_STATE}.tmp"
    temp.write_text(result.to_json())
    os.replace(temp, directory / FINAL_STATE)


def _load_final(directory: Path) -> FinalizeResult | None:
    try:
        return FinalizeResult.from_json((directory / FINAL_STATE).read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- worker side
#
# Capture runs these in worker processes, each recording always on the same worker
# (chosen by its id), so its encoder (Opus and decoder state, reorder buffers) stays
# in that process between steps. A worker that dies loses nothing: the next call
# resumes from the segments and live.opus.

_ENCODERS: dict[str, LiveEncoder] = {}


def worker_step(directory: Path, recording_id: str, specs: list[StreamSpec], now_ms: float,
                bitrate: int, mode: OpusMode = NARROWBAND_MODE) -> tuple[Progress | None, int]:
    """One live step of one recording: (new progress or None, bytes appended)."""
    encoder = _ENCODERS.get(recording_id)
    if encoder is None and not any(spec.payload_codecs for spec in specs):
        return None, 0  # no codec negotiated yet: the rate to encode at is not known
    try:
        if encoder is None:
            encoder = LiveEncoder(directory, recording_id, bitrate=bitrate,
                                  rate=encoding_rate(specs), narrowband_mode=mode)
            _ENCODERS[recording_id] = encoder
        before = encoder.bytes
        progress = encoder.step(specs, now_ms)
    except Exception:
        worker_drop(recording_id)  # the next step starts again from disk
        raise
    return progress, (progress.bytes - before) if progress is not None else 0


def worker_finish(directory: Path, recording_id: str, specs: list[StreamSpec],
                  duration_ms: int, bitrate: int,
                  mode: OpusMode = NARROWBAND_MODE) -> FinalizeResult:
    """Encode the tail and close live.opus (resumed from disk if this worker lacks it)."""
    encoder = _ENCODERS.get(recording_id)
    try:
        if encoder is None:
            encoder = LiveEncoder(directory, recording_id, bitrate=bitrate,
                                  rate=encoding_rate(specs), narrowband_mode=mode)
            _ENCODERS[recording_id] = encoder
        result = encoder.finish(specs, duration_ms)
    except Exception:
        worker_drop(recording_id)
        raise
    worker_drop(recording_id)
    return result


def worker_drop(recording_id: str) -> None:
    """Forget a recording (done, released or failed)."""
    encoder = _ENCODERS.pop(recording_id, None)
    if encoder is not None:
        encoder.close()


StepJob = tuple[Path, str, list[StreamSpec], float, int, OpusMode]
"""(directory, recording id, streams, now_ms, bitrate, narrowband mode) of one live step."""


class StepResult(NamedTuple):
    """What one live step did: one recording's failure never stops the others."""

    progress: Progress | None  # new progress, or None when nothing was appended
    grown: int  # bytes appended to live.opus
    error: str | None  # reported to capture, which logs and counts it
    drained: bool  # LiveEncoder.drained: capture need not step it again until data comes


def worker_steps(jobs: list[StepJob]) -> list[StepResult]:
    """Live steps of all the recordings a worker owns, in one round trip per flush."""
    results: list[StepResult] = []
    for directory, recording_id, specs, now_ms, bitrate, mode in jobs:
        try:
            progress, grown = worker_step(directory, recording_id, specs, now_ms, bitrate, mode)
        except Exception as exc:
            results.append(StepResult(None, 0, f"{type(exc).__name__}: {exc}", False))
        else:
            encoder = _ENCODERS.get(recording_id)  # None: no codec yet, nothing encoded
            results.append(StepResult(progress, grown, None,
                                      encoder is not None and encoder.drained))
    return results


FinishJob = tuple[Path, str, list[StreamSpec], int, int, OpusMode]
"""(directory, recording id, streams, duration_ms, bitrate, narrowband mode) of one finish."""


def worker_finishes(jobs: list[FinishJob]) -> list[FinalizeResult | Exception]:
    """The finishes of several recordings a worker owns, in one round trip (as
    worker_steps): each gets its result or its own exception (one failure never
    stops the others; an exception that would not cross the pipe goes as a
    RuntimeError naming it)."""
    results: list[FinalizeResult | Exception] = []
    for job in jobs:
        try:
            results.append(worker_finish(*job))
        except Exception as exc:
            results.append(_picklable(exc))
    return results


def _picklable(exc: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc
