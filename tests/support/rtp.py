"""RTP/G.711 helpers for callrec's end-to-end tests.

* :func:`ulaw_encode` / :func:`ulaw_decode` - small numpy G.711 mu-law codec
  (independent of ``callrec.audio`` on purpose).
* :func:`pcmu_tone` / :func:`pcmu_tone_file` - a sine tone as raw PCMU payload
  bytes; the file form is what SIPp's ``<exec rtp_stream="tone.pcmu,..."/>``
  plays (raw payload, no WAV header, 160 bytes per 20 ms packet).
* :class:`RtpSender` - a real-time paced PCMU RTP sender (thread) with optional
  loss / duplication / reordering injection.
* :func:`dominant_frequency` - FFT peak, to check which tone ended up where.

Everything binds to 127.0.0.1 by default.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from aiortc.rtp import RtpPacket

SAMPLE_RATE = 8000
PTIME_MS = 20
SAMPLES_PER_PACKET = SAMPLE_RATE * PTIME_MS // 1000  # 160 == bytes per PCMU packet
PT_PCMU = 0

_BIAS = 0x84
_CLIP = 32635


# --------------------------------------------------------------------------- G.711


def ulaw_encode(samples: np.ndarray) -> bytes:
    """Encode 16-bit linear PCM samples (any int/float array in int16 range) to mu-law."""
    x = np.asarray(samples).astype(np.int32)
    sign = np.where(x < 0, 0x80, 0x00).astype(np.int32)
    mag = np.minimum(np.abs(x), _CLIP) + _BIAS  # 132 .. 32767
    exponent = np.floor(np.log2(mag)).astype(np.int32) - 7  # 0 .. 7
    mantissa = (mag >> (exponent + 3)) & 0x0F
    out = ~(sign | (exponent << 4) | mantissa) & 0xFF
    return bytes(out.astype(np.uint8).tobytes())


def ulaw_decode(data: bytes) -> np.ndarray:
    """Decode mu-law bytes to int16 linear PCM."""
    u = ~np.frombuffer(data, dtype=np.uint8).astype(np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    mag = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(sign != 0, -mag, mag).astype(np.int16)


# --------------------------------------------------------------------------- tones


def tone_samples(
    hz: float, seconds: float, amplitude: float = 0.5, rate: int = SAMPLE_RATE
) -> np.ndarray:
    """int16 sine samples; the length is rounded to whole 20 ms packets."""
    n = round(seconds * rate / SAMPLES_PER_PACKET) * SAMPLES_PER_PACKET
    t = np.arange(n) / rate
    return np.round(np.sin(2 * np.pi * hz * t) * amplitude * 32767).astype(np.int16)


def pcmu_tone(hz: float, seconds: float, amplitude: float = 0.5) -> bytes:
    """A tone as raw PCMU payload bytes (a multiple of 160 bytes)."""
    return ulaw_encode(tone_samples(hz, seconds, amplitude))


def pcmu_tone_file(path: str | Path, hz: float, seconds: float, amplitude: float = 0.5) -> Path:
    """Write a raw PCMU payload file for SIPp ``rtp_stream`` (payload type 0)."""
    p = Path(path)
    p.write_bytes(pcmu_tone(hz, seconds, amplitude))
    return p


def dominant_frequency(samples: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    """Frequency (Hz) of the FFT magnitude peak (DC excluded, Hann window)."""
    x = np.asarray(samples, dtype=np.float64)
    if x.size < 16:
        return 0.0
    x = x - x.mean()
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    spec[0] = 0.0
    return float(np.argmax(spec) * rate / x.size)


# --------------------------------------------------------------------------- sender


@dataclass
class Impairment:
    """Network impairments applied by :class:`RtpSender`.

    Probabilities are per packet (seeded RNG, reproducible). ``drop`` /
    ``duplicate`` / ``swap_with_next`` additionally name packet *indices*
    (0-based, in send order) to drop, send twice, or swap with the following
    packet (i.e. deterministic reordering).
    """

    loss: float = 0.0
    duplicate_prob: float = 0.0
    reorder_prob: float = 0.0
    seed: int = 0
    drop: frozenset[int] = field(default_factory=frozenset)
    duplicate: frozenset[int] = field(default_factory=frozenset)
    swap_with_next: frozenset[int] = field(default_factory=frozenset)


class RtpSender:
    """Send a PCMU payload stream as RTP, 20 ms per packet, paced in real time.

    ``payload`` is raw mu-law bytes (e.g. :func:`pcmu_tone`); it is cut into
    160-byte packets (the last one zero-padded with 0xFF silence). Sequence
    numbers / timestamps start at random values unless given and wrap modulo
    2**16 / 2**32; the first packet carries the marker bit.

    Use as a context manager or ``start()`` / ``join()`` / ``stop()``.
    """

    def __init__(
        self,
        dest: tuple[str, int],
        payload: bytes,
        *,
        payload_type: int = PT_PCMU,
        ssrc: int | None = None,
        seq_start: int | None = None,
        ts_start: int | None = None,
        bind: tuple[str, int] = ("127.0.0.1", 0),
        impairment: Impairment | None = None,
        start_delay: float = 0.0,
    ) -> None:
        rnd = random.Random()
        self.dest = dest
        self.payload_type = payload_type
        self.ssrc = rnd.getrandbits(32) if ssrc is None else ssrc
        self.seq_start = rnd.getrandbits(16) if seq_start is None else seq_start
        self.ts_start = rnd.getrandbits(32) if ts_start is None else ts_start
        self.impairment = impairment or Impairment()
        self.start_delay = start_delay
        pad = (-len(payload)) % SAMPLES_PER_PACKET
        data = payload + b"\xff" * pad
        self._chunks = [
            data[i : i + SAMPLES_PER_PACKET] for i in range(0, len(data), SAMPLES_PER_PACKET)
        ]
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(bind)
        self.local_port: int = self.sock.getsockname()[1]
        self.packets_sent = 0  # datagrams actually sent (after loss/dup)
        self.sent_seqs: list[int] = []  # sequence numbers in wire order
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rtp->{dest[1]}", daemon=True)

    # packets in intended order, before impairment: (seq, ts, marker, payload)
    def _packets(self) -> list[tuple[int, int, int, bytes]]:
        return [
            (
                (self.seq_start + i) & 0xFFFF,
                (self.ts_start + i * SAMPLES_PER_PACKET) & 0xFFFFFFFF,
                1 if i == 0 else 0,
                chunk,
            )
            for i, chunk in enumerate(self._chunks)
        ]

    def _schedule(self) -> list[list[tuple[int, int, int, bytes]]]:
        """Per 20 ms slot: the datagrams to send in that slot."""
        imp = self.impairment
        rng = random.Random(imp.seed)
        pkts = self._packets()
        order = list(range(len(pkts)))
        i = 0
        while i < len(order) - 1:
            if order[i] in imp.swap_with_next or (
                imp.reorder_prob and rng.random() < imp.reorder_prob
            ):
                order[i], order[i + 1] = order[i + 1], order[i]
                i += 2
            else:
                i += 1
        slots: list[list[tuple[int, int, int, bytes]]] = []
        for idx in order:
            slot: list[tuple[int, int, int, bytes]] = []
            lost = idx in imp.drop or (imp.loss and rng.random() < imp.loss)
            if not lost:
                slot.append(pkts[idx])
                if idx in imp.duplicate or (
                    imp.duplicate_prob and rng.random() < imp.duplicate_prob
                ):
                    slot.append(pkts[idx])
            slots.append(slot)
        return slots

    def _run(self) -> None:
        try:
            if self.start_delay and self._stop.wait(self.start_delay):
                return
            t0 = time.monotonic()
            for n, slot in enumerate(self._schedule()):
                delay = t0 + n * PTIME_MS / 1000 - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                if self._stop.is_set():
                    return
                for seq, ts, marker, chunk in slot:
                    pkt = RtpPacket(
                        payload_type=self.payload_type,
                        marker=marker,
                        sequence_number=seq,
                        timestamp=ts,
                        ssrc=self.ssrc,
                        payload=chunk,
                    )
                    self.sock.sendto(pkt.serialize(), self.dest)
                    self.packets_sent += 1
                    self.sent_seqs.append(seq)
        except BaseException as exc:  # surfaced via .error / join()
            self.error = exc

    @property
    def packet_count(self) -> int:
        """Packets in the stream (before impairment)."""
        return len(self._chunks)

    def start(self) -> RtpSender:
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the stream to finish; True if finished. Re-raises a sender error."""
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return not self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        self.sock.close()

    def __enter__(self) -> RtpSender:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
