"""Speech for quality checks: espeak-ng's voice at 8 kHz, and STOI at the best alignment.

One place for what the quality test and the benchmarks both need (the encoding's
effect on intelligibility is measured the same way everywhere).
"""

from __future__ import annotations

import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt

RATE = 8000
NEAR_TEXT = ("Thank you for calling. Your account number is four five seven two. "
             "Please hold while I transfer you to the billing department.")
FAR_TEXT = ("Hello, I would like to change the delivery address for my order "
            "from last Tuesday, and cancel the second item please.")


def espeak(text: str, rate: int = RATE) -> npt.NDArray[np.int16]:
    """espeak-ng's voice (22.05 kHz) resampled to ``rate``, peaking at -6 dBFS."""
    from scipy.signal import resample_poly

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", "en", "-s", "160", "-w", str(path), text],
                       check=True)
        with wave.open(str(path)) as handle:
            source_rate = handle.getframerate()
            raw = np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2")
    x = resample_poly(raw.astype(np.float64), rate, source_rate)
    x *= 0.5 * 32767 / np.max(np.abs(x))
    return np.round(x).astype(np.int16)


def aligned_stoi(reference: npt.NDArray[np.int16], decoded: npt.NDArray[np.int16],
                 rate: int = RATE, *, extended: bool = False) -> float:
    """STOI at the best alignment within +-50 ms (placement by arrival may shift a little).

    ``extended``: ESTOI (Jensen and Taal 2016), stricter where the distortion is not
    additive noise (a codec's), and lower on the same audio."""
    from pystoi import stoi

    ref = reference.astype(np.float64)
    out = decoded.astype(np.float64)
    best, best_lag = -np.inf, 0
    for lag in range(-rate // 20, rate // 20 + 1):
        a = ref[max(0, -lag):]
        b = out[max(0, lag):]
        n = min(a.size, b.size)
        score = float(np.dot(a[:n], b[:n]))
        if score > best:
            best, best_lag = score, lag
    a = ref[max(0, -best_lag):]
    b = out[max(0, best_lag):]
    n = min(a.size, b.size)
    return float(stoi(a[:n], b[:n], rate, extended=extended))
