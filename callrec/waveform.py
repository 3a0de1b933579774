"""Waveform peaks: what a recording page draws, computed once from the PCM.

Per channel and per bucket, the lowest and highest sample, quantised to int8 and
base64-encoded (`contracts.v1.events.WaveformPeaks`). A bucket is BASE_MS (one 20 ms
audio frame) times a power of two: the smallest such width that gives at most
MAX_BUCKETS buckets, so a call of any length draws with 1000 to 2000 buckets (fewer
under 40 s) and its peaks stay under about 11 KB of JSON.

The accumulator is fed a piece at a time (capture's live encoder feeds it what it
encodes, so finalize costs nothing more); it halves its resolution whenever it holds
more than 2 x MAX_BUCKETS buckets, so its memory is bounded whatever the call's length,
and the result does not depend on how the PCM was cut into pieces (one rule: the
whole-array function below is the accumulator fed once).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from contracts.v1.events import WaveformPeaks

__all__ = ["BASE_MS", "MAX_BUCKETS", "PeakAccumulator", "compute_peaks", "decode_peaks",
           "peaks_of_file"]

BASE_MS = 20
MAX_BUCKETS = 2000

Int16Array = npt.NDArray[np.int16]
Int8Array = npt.NDArray[np.int8]


class PeakAccumulator:
    """Min/max peaks of `channels` int16 channels at `rate`, fed in pieces of any size."""

    def __init__(self, rate: int = 16000, channels: int = 2) -> None:
        if rate <= 0 or rate * BASE_MS % 1000:
            raise ValueError(f"rate {rate} does not divide into {BASE_MS} ms buckets")
        self.rate = rate
        self.channels = channels
        self.size = rate * BASE_MS // 1000  # samples per bucket
        self.samples = 0
        # Whole buckets, already quantised to int8 (half the memory of int16: one live
        # accumulator per active call). Quantising commutes with min and max (it is
        # monotone), so merging quantised buckets gives what quantising merged ones does.
        self._lo = np.zeros((channels, 0), dtype=np.int8)
        self._hi = np.zeros((channels, 0), dtype=np.int8)
        # The bucket being filled: its extremes and how many samples it holds.
        self._part_lo = np.zeros(channels, dtype=np.int16)
        self._part_hi = np.zeros(channels, dtype=np.int16)
        self._part_n = 0

    def add(self, pcm: npt.ArrayLike) -> None:
        """Append samples of shape (channels, n)."""
        x = np.asarray(pcm, dtype=np.int16)
        if x.ndim != 2 or x.shape[0] != self.channels:
            raise ValueError(f"expected ({self.channels}, n) samples, got {x.shape}")
        n = x.shape[1]
        if n == 0:
            return
        self.samples += n
        pos = 0
        if self._part_n:
            take = min(self.size - self._part_n, n)
            self._part_lo = np.minimum(self._part_lo, x[:, :take].min(axis=1))
            self._part_hi = np.maximum(self._part_hi, x[:, :take].max(axis=1))
            self._part_n += take
            pos = take
            if self._part_n == self.size:
                self._append(self._part_lo[:, None], self._part_hi[:, None])
                self._part_n = 0
        full = (n - pos) // self.size
        if full:
            block = x[:, pos:pos + full * self.size].reshape(self.channels, full, self.size)
            self._append(block.min(axis=2), block.max(axis=2))
            pos += full * self.size
        if pos < n:
            self._part_lo = x[:, pos:].min(axis=1)
            self._part_hi = x[:, pos:].max(axis=1)
            self._part_n = n - pos
        while self._lo.shape[1] > 2 * MAX_BUCKETS:
            self._double()

    def result(self) -> WaveformPeaks:
        """The peaks of everything added so far (at most MAX_BUCKETS buckets)."""
        while self._lo.shape[1] + (1 if self._part_n else 0) > MAX_BUCKETS:
            self._double()
        lo8, hi8 = self._lo, self._hi
        if self._part_n:
            lo8 = np.concatenate([lo8, _quantise_lo(self._part_lo[:, None])], axis=1)
            hi8 = np.concatenate([hi8, _quantise_hi(self._part_hi[:, None])], axis=1)
        pairs = np.empty((self.channels, lo8.shape[1] * 2), dtype=np.int8)
        pairs[:, 0::2] = lo8
        pairs[:, 1::2] = hi8
        return WaveformPeaks(
            bucket_ms=self.size * 1000 // self.rate,
            buckets=int(lo8.shape[1]),
            channels=[base64.b64encode(pairs[c].tobytes()).decode("ascii")
                      for c in range(self.channels)],
        )

    def _append(self, lo: Int16Array, hi: Int16Array) -> None:
        self._lo = np.concatenate([self._lo, _quantise_lo(lo)], axis=1)
        self._hi = np.concatenate([self._hi, _quantise_hi(hi)], axis=1)

    def _double(self) -> None:
        """Merge neighbouring buckets: same extremes, half the resolution."""
        count = self._lo.shape[1]
        pairs = count // 2
        lo = np.minimum(self._lo[:, 0:2 * pairs:2], self._lo[:, 1:2 * pairs:2])
        hi = np.maximum(self._hi[:, 0:2 * pairs:2], self._hi[:, 1:2 * pairs:2])
        if count % 2:
            # The odd last bucket becomes the start of the (wider) bucket being filled.
            # Back to int16 as a value that quantises to the same (s * 256 does, for
            # the floor and for the ceiling), so it merges with raw samples exactly.
            last_lo = self._lo[:, -1].astype(np.int16) * 256
            last_hi = self._hi[:, -1].astype(np.int16) * 256
            if self._part_n:
                last_lo = np.minimum(last_lo, self._part_lo)
                last_hi = np.maximum(last_hi, self._part_hi)
            self._part_lo, self._part_hi = last_lo, last_hi
            self._part_n += self.size
        self._lo, self._hi = lo, hi
        self.size *= 2


def _quantise_lo(lo: Int16Array) -> Int8Array:
    """int16 -> int8 of a minimum: the floor, so a quiet but non-zero signal still
    draws a line and silence draws nothing. (An int16 shifted by 8 fits an int8.)"""
    out: Int8Array = (lo.astype(np.int16, copy=False) >> 8).astype(np.int8)
    return out


def _quantise_hi(hi: Int16Array) -> Int8Array:
    """int16 -> int8 of a maximum: the ceiling (see _quantise_lo), (h + 255) // 256;
    only 32513 and up reach 128, which is kept at 127. No np.clip: it costs more than
    the rest of a live step's peaks."""
    out: Int8Array = np.minimum((hi.astype(np.int32) + 255) >> 8, 127).astype(np.int8)
    return out


def compute_peaks(pcm: npt.ArrayLike, rate: int) -> WaveformPeaks:
    """The peaks of a whole recording, int16 of shape (channels, samples)."""
    x = np.asarray(pcm, dtype=np.int16)
    accumulator = PeakAccumulator(rate, x.shape[0])
    accumulator.add(x)
    return accumulator.result()


def peaks_of_chunks(chunks: Iterable[Int16Array], rate: int, channels: int = 2,
                    limit: int | None = None) -> tuple[PeakAccumulator, int]:
    """Feed decoded (channels, n) chunks to a new accumulator, at most `limit` samples.

    A mono chunk counts for every channel; extra channels are ignored. Returns the
    accumulator (to go on feeding it) and how many samples it took.
    """
    accumulator = PeakAccumulator(rate, channels)
    for chunk in chunks:
        if limit is not None:
            chunk = chunk[:, :max(limit - accumulator.samples, 0)]
        if chunk.shape[0] < channels:
            chunk = np.repeat(chunk[:1], channels, axis=0)
        accumulator.add(chunk[:channels])
        if limit is not None and accumulator.samples >= limit:
            break
    return accumulator, accumulator.samples


def peaks_of_file(path: Path, rate: int = 16000) -> tuple[WaveformPeaks, int]:
    """Decode an audio file (streamed: memory stays flat) into (peaks, duration in ms)."""
    from callrec.audio import iter_decoded  # PyAV: only where files are decoded

    accumulator, samples = peaks_of_chunks((c for c, _ in iter_decoded(path, rate)), rate)
    return accumulator.result(), samples * 1000 // rate


def decode_peaks(peaks: WaveformPeaks) -> npt.NDArray[np.int8]:
    """(channels, buckets, 2) int8: each bucket's (min, max) per channel."""
    out = np.zeros((len(peaks.channels), peaks.buckets, 2), dtype=np.int8)
    for index, text in enumerate(peaks.channels):
        raw = np.frombuffer(base64.b64decode(text, validate=True), dtype=np.int8)
        if raw.size != peaks.buckets * 2:
            raise ValueError(f"channel {index}: {raw.size} bytes for {peaks.buckets} buckets")
        out[index] = raw.reshape(-1, 2)
    return out
