"""Audio helpers shared by capture (encoding), the web service (WAV download) and tests.

Everything is int16 PCM at the edges because that is what telephony codecs
produce and what WAV downloads need; floating point is only used internally.
The G.711 tables live here so that the finalize fast path and the test
fixtures (which fabricate SIPp payload files) agree bit for bit.
"""

from __future__ import annotations

import shutil
import struct
import wave
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from callrec.opus import MultistreamEncoder, OpusMode

__all__ = [
    "PCMA_DECODE_TABLE",
    "PCMU_DECODE_TABLE",
    "OggPageInfo",
    "OpusPageEncoder",
    "decode_file",
    "dominant_frequency",
    "duration_seconds",
    "encode_opus_stereo",
    "ogg_crc",
    "ogg_page",
    "opus_input_rate",
    "pcma_decode",
    "pcma_encode",
    "pcmu_decode",
    "pcmu_encode",
    "scan_ogg_pages",
    "tone",
    "transcode",
    "transcode_to_wav",
]

Int16Array = npt.NDArray[np.int16]

# --------------------------------------------------------------------------- G.711


def _build_pcmu_table() -> Int16Array:
    # mu-law bytes are stored inverted; the linear value is a biased
    # segment/mantissa pair (bias 0x84) per ITU-T G.711.
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    mantissa = codes & 0x0F
    segment = (codes >> 4) & 0x07
    magnitude = (((mantissa << 3) + 0x84) << segment) - 0x84
    values = np.where(codes & 0x80, -magnitude, magnitude)
    return values.astype(np.int16)


def _build_pcma_table() -> Int16Array:
    # A-law toggles the even bits (0x55); segment 0 is linear, the others
    # carry an implicit leading one (the +32 / +1 half-step reconstruction).
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    mantissa = codes & 0x0F
    segment = (codes >> 4) & 0x07
    base = (mantissa << 1) + 1
    magnitude = np.where(
        segment == 0,
        base << 3,
        (base + 32) << (segment + 2),
    )
    values = np.where(codes & 0x80, magnitude, -magnitude)
    return values.astype(np.int16)


PCMU_DECODE_TABLE: Int16Array = _build_pcmu_table()
"""256-entry G.711 mu-law -> int16 table (bit-exact with FFmpeg's pcm_mulaw)."""

PCMA_DECODE_TABLE: Int16Array = _build_pcma_table()
"""256-entry G.711 A-law -> int16 table (bit-exact with FFmpeg's pcm_alaw)."""


def pcmu_decode(payload: bytes) -> Int16Array:
    """Decode G.711 mu-law bytes with a table lookup (no codec context needed)."""
    return PCMU_DECODE_TABLE[np.frombuffer(payload, dtype=np.uint8)]


def pcma_decode(payload: bytes) -> Int16Array:
    """Decode G.711 A-law bytes with a table lookup (no codec context needed)."""
    return PCMA_DECODE_TABLE[np.frombuffer(payload, dtype=np.uint8)]


def _build_encode_table(decode_table: Int16Array) -> npt.NDArray[np.uint8]:
    # Nearest-level quantiser over every int16 input: exact by construction
    # (the decoded value is always the closest representable one), and a
    # single table lookup at encode time. Scanning the table from the top
    # makes duplicate levels (mu-law's +0/-0) pick the positive code.
    levels, first = np.unique(decode_table[::-1], return_index=True)
    codes = (255 - first).astype(np.uint8)
    x = np.arange(-32768, 32768, dtype=np.int32)
    hi = np.clip(np.searchsorted(levels, x), 1, levels.size - 1)
    lo = hi - 1
    d_lo = np.abs(x - levels[lo].astype(np.int32))
    d_hi = np.abs(x - levels[hi].astype(np.int32))
    lo_mag = np.abs(levels[lo].astype(np.int32))
    hi_mag = np.abs(levels[hi].astype(np.int32))
    take_lo = (d_lo < d_hi) | ((d_lo == d_hi) & (lo_mag <= hi_mag))
    return np.where(take_lo, codes[lo], codes[hi]).astype(np.uint8)


_PCMU_ENCODE_TABLE = _build_encode_table(PCMU_DECODE_TABLE)
_PCMA_ENCODE_TABLE = _build_encode_table(PCMA_DECODE_TABLE)


def _encode_with(table: npt.NDArray[np.uint8], samples: npt.ArrayLike) -> bytes:
    arr = np.asarray(samples)
    if arr.ndim != 1:
        raise ValueError("expected a 1-D array of samples")
    index = np.clip(arr.astype(np.int64), -32768, 32767) + 32768
    return table[index].tobytes()


def pcmu_encode(samples: npt.ArrayLike) -> bytes:
    """Encode int16 samples as G.711 mu-law (used to fabricate RTP payloads)."""
    return _encode_with(_PCMU_ENCODE_TABLE, samples)


def pcma_encode(samples: npt.ArrayLike) -> bytes:
    """Encode int16 samples as G.711 A-law (used to fabricate RTP payloads)."""
    return _encode_with(_PCMA_ENCODE_TABLE, samples)


# --------------------------------------------------------------------------- test signals


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> Int16Array:
    """Sine tone as int16; amplitude is relative to full scale."""
    n = round(seconds * rate)
    t = np.arange(n, dtype=np.float64) / rate
    wave_ = amplitude * 32767.0 * np.sin(2.0 * np.pi * freq * t)
    return np.clip(np.round(wave_), -32768, 32767).astype(np.int16)


def sound_seconds(samples: npt.NDArray[np.integer[Any]], rate: int,
                  threshold: float = 1000.0) -> float:
    """How long a channel carries sound: 20 ms frames whose RMS is above `threshold`
    (int16 scale). Tests use it to check that no audio was lost or misplaced."""
    frame = rate // 50
    usable = len(samples) // frame * frame
    frames = samples[:usable].astype(np.float64).reshape(-1, frame)
    rms = np.sqrt((frames**2).mean(axis=1))
    return float((rms > threshold).sum() * 0.02)


def dominant_frequency(samples: npt.ArrayLike, rate: int) -> float:
    """Frequency (Hz) of the strongest spectral peak, 0.0 for silence.

    Uses a Hann window and parabolic interpolation so short test signals
    still resolve to within a few Hz.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError("expected a 1-D array of samples")
    if x.size < 4:
        return 0.0
    x = x - x.mean()
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    spectrum[0] = 0.0
    peak = int(np.argmax(spectrum))
    if spectrum[peak] <= 0.0:
        return 0.0
    offset = 0.0
    if 0 < peak < spectrum.size - 1:
        a, b, c = np.log(spectrum[peak - 1 : peak + 2] + 1e-12)
        denom = a - 2.0 * b + c
        if denom != 0.0:
            offset = 0.5 * (a - c) / denom
    return float((peak + offset) * rate / x.size)


# --------------------------------------------------------------------------- files


def encode_opus_stereo(
    left: npt.ArrayLike,
    right: npt.ArrayLike,
    rate: int,
    path: Path,
    *,
    bitrate: int = 16000,
    complexity: int = 5,
    independent_channels: bool = True,
) -> None:
    """Write a two-channel Ogg/Opus file (left = near end, right = far end).

    Why independent channels: below roughly 30 kbit/s libopus' coupled
    stereo mode decides the input is "nearly mono" and collapses it, so at
    16 kbit/s the far end would be copied into the near-end channel (the
    channels are unrelated talkers, not a stereo image). Channel mapping
    family 255 codes each side as its own mono Opus stream, which keeps
    perfect separation at any bitrate. Players built on FFmpeg or libopus
    handle it; pass ``independent_channels=False`` (and >= 32 kbit/s) for a
    classic mapping-family-0 file if a player needs it.

    Complexity 5 roughly halves encoder CPU compared with libopus' default
    (10) at a quality loss that is inaudible for narrowband telephony.
    The caller owns temp names and atomic renames.
    """
    lch = np.asarray(left)
    rch = np.asarray(right)
    if lch.ndim != 1 or rch.ndim != 1:
        raise ValueError("left and right must be 1-D arrays")
    if lch.shape != rch.shape:
        raise ValueError(f"channel lengths differ: {lch.size} != {rch.size}")
    if rate <= 0:
        raise ValueError(f"invalid sample rate {rate}")
    # An Ogg file without audio packets cannot be opened again, so an empty
    # recording becomes one sample of silence.
    count = max(lch.size, 1)
    interleaved = np.zeros((1, count * 2), dtype=np.int16)
    interleaved[0, 0 : 2 * lch.size : 2] = np.clip(lch, -32768, 32767)
    interleaved[0, 1 : 2 * rch.size : 2] = np.clip(rch, -32768, 32767)

    options = {"compression_level": str(complexity), "application": "voip"}
    if independent_channels:
        options["mapping_family"] = "255"
    with av.open(str(path), mode="w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=rate)
        stream.layout = "stereo"
        stream.format = "s16"
        stream.bit_rate = bitrate
        stream.codec_context.options = options
        stream.codec_context.time_base = Fraction(1, rate)
        stream.codec_context.open()
        frame_size = stream.codec_context.frame_size or rate // 50
        for start in range(0, count, frame_size):
            chunk = interleaved[:, 2 * start : 2 * (start + frame_size)]
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(chunk), format="s16", layout="stereo"
            )
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = Fraction(1, rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def iter_decoded(path: Path, rate: int | None = None) -> Iterator[tuple[Int16Array, int]]:
    """Decode the first audio stream chunk by chunk: (int16 (channels, n), rate) pairs.

    Streaming keeps memory flat for hour-long recordings; ``rate`` resamples.
    """
    with av.open(str(path), mode="r") as container:
        if not container.streams.audio:
            raise ValueError(f"{path}: no audio stream")
        stream = container.streams.audio[0]
        resampler: av.AudioResampler | None = None
        out_rate = rate or 0
        channels = 0
        yielded = False
        for frame in container.decode(stream):
            if resampler is None:
                channels = frame.layout.nb_channels
                out_rate = rate or frame.sample_rate
                resampler = av.AudioResampler(format="s16", layout=frame.layout.name,
                                              rate=out_rate)
            for out in resampler.resample(frame):
                yielded = True
                yield _packed_to_planar(out.to_ndarray(), channels), out_rate
        if resampler is None:
            channels = stream.codec_context.channels or 1
            out_rate = rate or stream.codec_context.sample_rate or 0
        else:
            for out in resampler.resample(None):
                yielded = True
                yield _packed_to_planar(out.to_ndarray(), channels), out_rate
        if not yielded:  # no audio, or less than the resampler puts out (one sample)
            yield np.zeros((channels, 0), dtype=np.int16), int(out_rate)


def decode_file(path: Path, rate: int | None = None) -> tuple[Int16Array, int]:
    """Decode the first audio stream to int16 of shape (channels, samples).

    When ``rate`` is given the audio is resampled to it; otherwise the
    decoder's native rate is kept (48 kHz for Opus).
    """
    chunks: list[Int16Array] = []
    out_rate = 0
    for chunk, chunk_rate in iter_decoded(path, rate):
        chunks.append(chunk)
        out_rate = chunk_rate
    return np.concatenate(chunks, axis=1), int(out_rate)


def _packed_to_planar(array: npt.NDArray[np.generic], channels: int) -> Int16Array:
    # Packed s16 arrives as (1, samples * channels); de-interleave it.
    flat = array.reshape(-1)
    return np.ascontiguousarray(flat.reshape(-1, channels).T).astype(np.int16)


def transcode_to_wav(src: Path, dst: Path, rate: int = 16000) -> None:
    """Write ``src`` as 16-bit PCM WAV at ``rate`` (16 kHz: what capture recorded).

    Written as it decodes, so an hour-long call never sits in memory at once.
    """
    with wave.open(str(dst), "wb") as out:
        configured = False
        for chunk, chunk_rate in iter_decoded(src, rate):
            if not configured:
                out.setnchannels(max(chunk.shape[0], 1))
                out.setsampwidth(2)
                out.setframerate(chunk_rate)
                configured = True
            out.writeframes(np.ascontiguousarray(chunk.T).astype("<i2").tobytes())


def duration_seconds(path: Path) -> float:
    """Decoded duration in seconds (container metadata is unreliable for Ogg)."""
    total = 0.0
    with av.open(str(path), mode="r") as container:
        if not container.streams.audio:
            return 0.0
        for frame in container.decode(container.streams.audio[0]):
            if frame.sample_rate:
                total += frame.samples / frame.sample_rate
    return total


def transcode(src: Path, dst: Path, fmt: str, rate: int = 16000, bitrate: int = 32000) -> None:
    """Write ``src`` to ``dst`` as ``fmt``: "opus" (a plain copy of the stored Ogg/Opus),
    "wav" (16-bit PCM) or "mp3" (libmp3lame, ``bitrate`` bit/s at ``rate``).

    Streamed like transcode_to_wav, so exporting a long call keeps memory flat.
    """
    if fmt == "opus":
        shutil.copyfile(src, dst)
        return
    if fmt == "wav":
        transcode_to_wav(src, dst, rate)
        return
    if fmt != "mp3":
        raise ValueError(f"unsupported format {fmt!r} (opus, wav or mp3)")
    with av.open(str(dst), mode="w", format="mp3") as container:
        stream: Any = None
        layout = "stereo"
        pts = 0
        for chunk, chunk_rate in iter_decoded(src, rate):
            if stream is None:
                layout = "mono" if chunk.shape[0] == 1 else "stereo"
                stream = container.add_stream("libmp3lame", rate=chunk_rate)
                stream.layout = layout
                stream.format = "s16p"
                stream.bit_rate = bitrate
            if chunk.shape[1] == 0:
                continue
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(chunk[:2]), format="s16p", layout=layout
            )
            frame.sample_rate = chunk_rate
            frame.pts = pts
            frame.time_base = Fraction(1, chunk_rate)
            pts += chunk.shape[1]
            container.mux(stream.encode(frame))
        if stream is not None:
            container.mux(stream.encode(None))


# --------------------------------------------------------------------------- Ogg/Opus, page by page
#
# The live recording is written page by page so that any prefix of the file that ends
# on a page boundary is a playable recording (capture appends pages while the call is
# in progress; peers copy byte ranges of it). FFmpeg's Ogg muxer decides its own page
# boundaries, so pages are written here; libopus (callrec.opus) only makes packets.

OPUS_GRANULE_RATE = 48000
"""Ogg/Opus granule positions count 48 kHz samples whatever the input rate (RFC 7845)."""

_OGG_HEADER = struct.Struct("<4sBBqIIIB")
_OGG_CONTINUED, _OGG_BOS, _OGG_EOS = 1, 2, 4
_BIT_REVERSE = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def ogg_crc(data: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04C11DB7, unreflected, no init or final xor).

    zlib computes the reflected variant; on bit-reversed bytes with the register's
    xors undone it gives the bit-reversed Ogg value, at C speed.
    """
    raw = zlib.crc32(data.translate(_BIT_REVERSE), 0xFFFFFFFF) ^ 0xFFFFFFFF
    # Reversing 32 bits: the bytes in the other order, each byte's bits reversed.
    return int.from_bytes(raw.to_bytes(4, "little").translate(_BIT_REVERSE), "big")


def ogg_page(packets: list[bytes], *, serial: int, sequence: int, granule: int,
             flags: int = 0) -> bytes:
    """One Ogg page holding whole packets (at most 255 lacing values in all)."""
    lacing = bytearray()
    for packet in packets:
        size = len(packet)
        if size >= 255:
            lacing += b"\xff" * (size // 255)
        lacing.append(size % 255)
    if len(lacing) > 255:
        raise ValueError("packets do not fit one Ogg page")
    count = len(lacing)
    body = b"".join(packets)
    blank = _OGG_HEADER.pack(b"OggS", 0, flags, granule, serial, sequence, 0, count)
    crc = ogg_crc(b"".join((blank, lacing, body)))
    header = _OGG_HEADER.pack(b"OggS", 0, flags, granule, serial, sequence, crc, count)
    return b"".join((header, lacing, body))


@dataclass(frozen=True, slots=True)
class OggPageInfo:
    """Where a complete, checksum-valid page of an Ogg file ends and what it says."""

    end: int
    flags: int
    granule: int
    serial: int
    sequence: int


def scan_ogg_pages(path: Path) -> Iterator[OggPageInfo]:
    """Complete pages from the start of ``path``; stops at the first torn or bad page.

    Reads one page at a time, so scanning an hour-long file keeps memory flat.
    """
    with path.open("rb") as handle:
        offset = 0
        while True:
            header = handle.read(_OGG_HEADER.size)
            if len(header) < _OGG_HEADER.size:
                return
            magic, version, flags, granule, serial, sequence, crc, count = \
                _OGG_HEADER.unpack(header)
            if magic != b"OggS" or version != 0:
                return
            lacing = handle.read(count)
            if len(lacing) < count:
                return
            body = handle.read(sum(lacing))
            if len(body) < sum(lacing):
                return
            blank = bytearray(header + lacing + body)
            struct.pack_into("<I", blank, 22, 0)
            if ogg_crc(bytes(blank)) != crc:
                return
            offset += len(blank)
            yield OggPageInfo(offset, flags, granule, serial, sequence)


def opus_input_rate(path: Path) -> int | None:
    """The input sample rate an Ogg/Opus file's OpusHead records (RFC 7845), or None.

    A resumed live recording goes on at the rate it was started with.
    """
    try:
        with path.open("rb") as handle:
            header = handle.read(_OGG_HEADER.size)
            if len(header) < _OGG_HEADER.size or header[:4] != b"OggS":
                return None
            count = header[-1]
            lacing = handle.read(count)
            head = handle.read(sum(lacing))
    except OSError:
        return None
    if len(head) < 16 or head[:8] != b"OpusHead":
        return None
    rate: int = struct.unpack_from("<I", head, 12)[0]
    return rate or None


class OpusPageEncoder:
    """Two int16 channels in, Ogg pages of a stereo Opus stream out, in bounded pieces.

    Same layout as :func:`encode_opus_stereo` (mapping family 255: each channel its own
    mono Opus stream, so the two talkers never bleed into each other). Feed whole
    frames (``frame_ms``, 20 ms by default); :meth:`pages` returns the Ogg pages of
    what was encoded since the last call, each page holding whole packets, so the
    caller can append them to a
    file that then always ends on a page boundary. ``resume_from`` continues an
    existing stream (same serial, next page number, granule) with a fresh encoder:
    the decoder sees one continuous stream whose timing is unchanged; only the
    encoder look-ahead (6.5 ms) before the resume point is lost.
    """

    def __init__(self, rate: int = 16000, *, bitrate: int = 16000, complexity: int = 5,
                 frame_ms: int = 20, mode: OpusMode = "auto", serial: int = 0x63616C6C,
                 resume_from: OggPageInfo | None = None) -> None:
        self._opus = MultistreamEncoder(rate, bitrate=bitrate, complexity=complexity,
                                        frame_ms=frame_ms, mode=mode)
        self.rate = rate
        self.frame_size = self._opus.frame_size
        head = self._opus.head()
        self.pre_skip = self._opus.pre_skip
        self._scale = OPUS_GRANULE_RATE // rate
        self._pending: list[bytes] = []
        self.closed = False
        if resume_from is None:
            self.serial = serial
            self.sequence = 0
            self.granule = 0  # RFC 7845: decoded samples so far, pre-skip included
            tags = b"OpusTags" + struct.pack("<I", 7) + b"callrec" + struct.pack("<I", 0)
            self._header_pages = [
                ogg_page([head], serial=serial, sequence=0, granule=0, flags=_OGG_BOS),
                ogg_page([tags], serial=serial, sequence=1, granule=0),
            ]
            self.sequence = 2
        else:
            self.serial = resume_from.serial
            self.sequence = resume_from.sequence + 1
            self.granule = resume_from.granule
            self._header_pages = []
        # The granule of the last page put out: no later page may go below it (RFC
        # 7845 trims the end within the end-of-stream page only).
        self._paged_granule = self.granule

    @property
    def samples_done(self) -> int:
        """Input samples (at ``rate``) encoded into the pages so far."""
        return self.granule // self._scale

    @property
    def playable_ms(self) -> int:
        """Audio a player gets from the pages so far (the pre-skip is not played)."""
        return max(self.granule - self.pre_skip, 0) * 1000 // OPUS_GRANULE_RATE

    def encode(self, left: Int16Array, right: Int16Array) -> None:
        """Encode whole frames of both channels (lengths equal, multiple of frame_size)."""
        if left.shape != right.shape or left.size % self.frame_size:
            raise ValueError("feed equal channels of whole frames")
        if left.size == 0:
            return
        interleaved = np.empty(left.size * 2, dtype=np.int16)
        interleaved[0::2] = left
        interleaved[1::2] = right
        self._pending.extend(self._opus.encode_frames(interleaved))

    def pages(self) -> bytes:
        """Ogg pages of everything encoded since the last call (b"" if nothing)."""
        out = b"".join(self._header_pages)
        self._header_pages = []
        out += self._page_out(self._pending, 0)
        self._pending = []
        return out

    def close(self, samples_total: int) -> bytes:
        """Flush the encoder and return the last pages, marked end of stream.

        ``samples_total`` (input samples since the stream began) sets the final
        granule position, so players trim the encoder's padding at the end. The
        trimmed samples must be on this last page: the caller keeps the padded last
        frame for it (not :meth:`pages`); an end below a page already put out is raised
        to that page's granule, never written going back.
        """
        # As FFmpeg flushes: silent frames until the look-ahead is out as well.
        silence = np.zeros(2 * self.frame_size, dtype=np.int16)
        for _ in range(-(-self._opus.lookahead // self.frame_size)):
            self._pending.append(self._opus.encode(silence))
        self._opus.close()
        self.closed = True
        last = self.pre_skip + samples_total * self._scale
        return b"".join(self._header_pages) + self._page_out(self._pending, _OGG_EOS,
                                                             final_granule=last)

    def release(self) -> None:
        """Free the native encoder without ending the stream (the recording goes on in
        another worker, or after a restart, from what the file holds)."""
        self._opus.close()

    def _page_out(self, packets: list[bytes], flags: int,
                  final_granule: int | None = None) -> bytes:
        frame = self.frame_size * self._scale
        out = bytearray()
        if not packets and flags & _OGG_EOS:
            granule = self.granule if final_granule is None else final_granule
            granule = max(min(granule, self.granule), self._paged_granule)
            out += ogg_page([], serial=self.serial, sequence=self.sequence,
                            granule=granule, flags=flags)
            self.sequence += 1
            self._paged_granule = granule
            return bytes(out)
        # At most 255 lacing values a page: one page holds 50+ voice packets.
        groups: list[list[bytes]] = [[]]
        lacing = 0
        for packet in packets:
            need = len(packet) // 255 + 1
            if lacing + need > 255:
                groups.append([])
                lacing = 0
            groups[-1].append(packet)
            lacing += need
        for index, group in enumerate(groups):
            if not group:
                continue
            self.granule += frame * len(group)
            last = index == len(groups) - 1
            granule = self.granule
            if final_granule is not None:
                # Trimmed on the last page; a page before it (only when the end's
                # packets need more than one page) never claims samples past the end.
                granule = max(min(final_granule, granule), self._paged_granule)
            out += ogg_page(group, serial=self.serial, sequence=self.sequence,
                            granule=granule, flags=flags if last else 0)
            self.sequence += 1
            self._paged_granule = granule
        return bytes(out)
