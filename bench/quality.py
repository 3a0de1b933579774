"""Storage and quality of a recorded call-hour, through capture's own encoder.

Three fabricated two-leg G.711 calls go through capture's live encoder as capture
runs it (a step every 0.5 s, then finish) at a given bitrate, and are decoded again:

- two tones, both parties sounding the whole call (440 / 1004 Hz): the worst case
  for size; checks that each tone keeps its frequency and is never dropped (20 ms
  frames that come out nearly silent are counted as dropouts). The tone call lasts
  ``--tone-seconds`` (60 by default): SILK's dropouts on a steady tone start only
  after several seconds;
- speech on both sides at once (espeak-ng): size and STOI per channel against the
  G.711 the recorder received;
- a conversation, one party at a time (5 s turns, digital silence otherwise): size
  and STOI.

    python -m bench.quality                    # the node's default and 12 kbit/s
    python -m bench.quality --bitrate 16000 --seconds 10
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from callrec.audio import decode_file, dominant_frequency, pcmu_decode, pcmu_encode  # noqa: E402
from callrec.config import NodeConfig  # noqa: E402
from services.capture.finalize import duration_of  # noqa: E402
from services.capture.manifest import RecordingManifest  # noqa: E402
from tests.support.callgen import FAR_HZ, NEAR_HZ, encode_as_capture, make_recording  # noqa: E402
from tests.support.speech import FAR_TEXT, NEAR_TEXT, aligned_stoi, espeak  # noqa: E402

RATE = 8000
FRAME = RATE // 50  # 20 ms
DROPOUT_RMS = 1000.0  # int16 scale: a 20 ms frame of a -6 dBFS tone is about 11,600
TURN_S = 5.0


@dataclass
class QualityRow:
    signal: str
    bitrate: int
    mb_call_h: float
    stoi: tuple[float, float] | None = None  # near, far
    tone_error_hz: float | None = None  # the larger of the two channels
    dropouts: int | None = None  # 20 ms frames of a tone that came out nearly silent

    def cells(self) -> str:
        stoi = f"{self.stoi[0]:.3f} / {self.stoi[1]:.3f}" if self.stoi else ""
        tone = "" if self.tone_error_hz is None else f"{self.tone_error_hz:.1f}"
        drops = "" if self.dropouts is None else str(self.dropouts)
        return (f"| {self.signal} | {self.bitrate} | {self.mb_call_h:.2f} | {stoi} | "
                f"{tone} | {drops} |")


HEADER = ("| signal | bit/s (both channels) | MB/call-h | STOI near / far | tone error Hz | "
          "tone dropouts (20 ms) |\n|---|---:|---:|---:|---:|---:|")


def encode(directory: Path, bitrate: int) -> tuple[npt.NDArray[np.int16], float]:
    """Capture's live encoding of a fabricated call, decoded: (2, n) samples, MB/call-h."""
    path = encode_as_capture(directory, bitrate)
    duration = duration_of(RecordingManifest.load(directory))
    decoded, _ = decode_file(path, RATE)
    return decoded, path.stat().st_size / (duration / 3_600_000) / 1e6


def dropouts(channel: npt.NDArray[np.int16]) -> int:
    """20 ms frames of a continuous tone whose RMS fell below DROPOUT_RMS."""
    usable = channel.size // FRAME * FRAME
    frames = channel[:usable].astype(np.float64).reshape(-1, FRAME)
    rms = np.sqrt((frames ** 2).mean(axis=1))
    return int((rms[5:-5] < DROPOUT_RMS).sum())  # the ends: the call's edges


def tones(root: Path, bitrate: int, seconds: float) -> QualityRow:
    decoded, mb = encode(make_recording(root / f"tones-{bitrate}", seconds), bitrate)
    middle = decoded[:, RATE // 2: -RATE // 2]
    error = max(abs(dominant_frequency(middle[0], RATE) - NEAR_HZ),
                abs(dominant_frequency(middle[1], RATE) - FAR_HZ))
    return QualityRow("two tones, both parties all the time", bitrate, mb,
                      tone_error_hz=error, dropouts=dropouts(decoded[0]) + dropouts(decoded[1]))


def _speech_row(root: Path, name: str, bitrate: int, near: npt.NDArray[np.int16],
                far: npt.NDArray[np.int16]) -> QualityRow:
    seconds = near.size / RATE
    directory = make_recording(root / f"{name}-{bitrate}", seconds,
                               signals={"near": near, "far": far})
    decoded, mb = encode(directory, bitrate)
    scores = tuple(aligned_stoi(pcmu_decode(pcmu_encode(original)), decoded[channel])
                   for channel, original in ((0, near), (1, far)))
    return QualityRow(name, bitrate, mb, stoi=(scores[0], scores[1]))


def speech_rows(root: Path, bitrate: int, seconds: float) -> list[QualityRow]:
    n = int(seconds * RATE)
    near, far = np.resize(espeak(NEAR_TEXT), n), np.resize(espeak(FAR_TEXT), n)
    turns = (np.arange(n) // int(TURN_S * RATE)) % 2 == 0  # near talks, then far, ...
    silent = np.zeros(n, dtype=np.int16)
    return [
        _speech_row(root, "speech, both sides at once", bitrate, near, far),
        _speech_row(root, f"conversation, one party at a time ({TURN_S:g} s turns)", bitrate,
                    np.where(turns, near, silent).astype(np.int16),
                    np.where(turns, silent, far).astype(np.int16)),
    ]


def measure(bitrates: list[int], seconds: float, *, speech: bool = True,
            tone_seconds: float | None = None) -> str:
    """The markdown table of every signal at every bitrate (the tone call lasts
    ``tone_seconds``, ``seconds`` if None)."""
    root = Path(tempfile.mkdtemp(prefix="callrec-quality-"))
    rows: list[QualityRow] = []
    try:
        for bitrate in bitrates:
            rows.append(tones(root, bitrate, tone_seconds or seconds))
            if speech and shutil.which("espeak-ng"):
                rows.extend(speech_rows(root, bitrate, seconds))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return "\n".join([HEADER, *(row.cells() for row in rows)])


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = NodeConfig.model_fields["opus_bitrate"].default
    parser.add_argument("--bitrate", type=int, action="append", default=[],
                        help=f"bit/s of both channels (default: {default} and 12000)")
    parser.add_argument("--seconds", type=float, default=30.0, help="speech calls")
    parser.add_argument("--tone-seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    table = measure(args.bitrate or [default, 12000], args.seconds,
                    tone_seconds=args.tone_seconds)
    print(table)
    return table


if __name__ == "__main__":
    main()
