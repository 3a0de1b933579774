"""Which libopus settings store a call-hour in the fewest bytes with tones and speech kept.

Issue 11 asks for <= 5.4 MB per call-hour (12 kbit/s with the Ogg overhead) with the
quality checked. Each candidate setting encodes three G.711 signals the way capture's
live encoder does (8 kHz, two mono Opus streams in one Ogg stream, pages every 0.5 s):

- two tones (440 / 1004 Hz, -6 dBFS) for ``--seconds`` (60 by default: SILK's trouble
  with a steady tone starts after several seconds), counting 20 ms dropouts exactly as
  bench/quality.py does (``dropouts``);
- speech on both sides at once (espeak-ng, 30 s), STOI and the stricter ESTOI against
  the G.711 original;
- a conversation, one party at a time (5 s turns), size only.

CPU is ``time.process_time`` of encoding all three, the median of ``--runs`` rounds
with the candidates interleaved, as a ratio to the node's default setting measured in
the same run (the first row). Decoding and STOI are outside the timed part.

    PYTHONPATH=$PWD .venv/bin/python -m bench.opus_settings              # every candidate
    PYTHONPATH=$PWD .venv/bin/python -m bench.opus_settings --only c1    # names containing c1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.quality import TURN_S, dropouts  # noqa: E402
from callrec import opus  # noqa: E402
from callrec.audio import OpusPageEncoder, decode_file, pcmu_decode, pcmu_encode  # noqa: E402
from callrec.opus import OpusMode  # noqa: E402
from services.capture.live import (  # noqa: E402
    NARROWBAND_MODE,
    OPUS_BITRATE,
    OPUS_COMPLEXITY,
    OPUS_FRAME_MS,
)
from tests.support.callgen import FAR_HZ, NEAR_HZ  # noqa: E402
from tests.support.speech import FAR_TEXT, NEAR_TEXT, aligned_stoi, espeak  # noqa: E402

RATE = 8000
STEP_S = 0.5  # capture's live step: one run of Ogg pages per step
SPEECH_S = 30.0
Pcm = npt.NDArray[np.int16]


@dataclass(frozen=True)
class Setting:
    name: str
    bitrate: int = OPUS_BITRATE
    complexity: int = OPUS_COMPLEXITY
    frame_ms: int = OPUS_FRAME_MS
    mode: OpusMode = NARROWBAND_MODE
    ctls: tuple[tuple[int, int], ...] = ()


@dataclass
class Row:
    setting: Setting
    tone_mb: float = 0.0
    tone_drops: int = 0
    speech_mb: float = 0.0
    stoi: tuple[float, float] = (0.0, 0.0)
    estoi: tuple[float, float] = (0.0, 0.0)
    talk_mb: float = 0.0
    cpu: list[float] = field(default_factory=list)


def candidates() -> list[Setting]:
    """Today's default first (the baseline), then CELT at other bitrates, then SILK
    (libopus' own choice at 8 kHz, the default until 2026-12-02) and what was tried on it."""
    cbr = ((opus.SET_VBR, 0),)
    rows = [Setting("default")]
    rows += [Setting(f"celt {kbit / 1000:g}k", kbit, mode="celt")
             for kbit in (16000, 12000, 11000, 10000)]
    rows += [Setting("celt 11.5k c2", 11500, 2, mode="celt"),
             Setting("silk 16k", 16000, mode="auto"), Setting("silk 12k", 12000, mode="auto")]
    for name, ctls in (("voice", ((opus.SET_SIGNAL, opus.SIGNAL_VOICE),)),
                       ("lsb16", ((opus.SET_LSB_DEPTH, 16),)),
                       ("max NB", ((opus.SET_BANDWIDTH_MAX, opus.BANDWIDTH_NARROWBAND),)),
                       ("cvbr", ((opus.SET_CONSTRAINED_VBR, 1),)),
                       ("fec0 loss0 dtx0", ((opus.SET_INBAND_FEC, 0),
                                            (opus.SET_PACKET_LOSS_PERC, 0),
                                            (opus.SET_DTX, 0)))):
        rows.append(Setting(f"silk 12k {name}", 12000, mode="auto", ctls=ctls))
    rows += [Setting("silk 12k 40 ms", 12000, frame_ms=40, mode="auto"),
             Setting("silk 12k 120 ms", 12000, frame_ms=120, mode="auto"),
             Setting("silk 12k cbr", 12000, mode="auto", ctls=cbr),
             Setting("silk 11.3k cbr", 11300, mode="auto", ctls=cbr),
             Setting("silk 11k cbr", 11000, mode="auto", ctls=cbr),
             Setting("silk 11k", 11000, mode="auto"), Setting("silk 10k", 10000, mode="auto")]
    for complexity in (1, 2):
        rows += [Setting(f"silk {kbit / 1000:g}k c{complexity}", kbit, complexity, mode="auto")
                 for kbit in (12000, 11500, 11000)]
    rows.append(Setting("silk 11.5k c1 120 ms", 11500, 1, frame_ms=120, mode="auto"))
    return rows


def g711(samples: Pcm) -> Pcm:
    """What the recorder receives: the PCM through a PCMU round trip."""
    return pcmu_decode(pcmu_encode(samples))


def encode(setting: Setting, left: Pcm, right: Pcm) -> tuple[bytes, float]:
    """(Ogg/Opus file bytes, CPU seconds) of the two channels under ``setting``."""
    started = time.process_time()
    encoder = OpusPageEncoder(RATE, bitrate=setting.bitrate, complexity=setting.complexity,
                              frame_ms=setting.frame_ms, mode=setting.mode)
    for request, value in setting.ctls:
        encoder._opus.set(request, value)  # the page encoder's own libopus state
    step = max(int(STEP_S * RATE) // encoder.frame_size, 1) * encoder.frame_size
    usable = left.size // encoder.frame_size * encoder.frame_size
    out = bytearray()
    for start in range(0, usable, step):
        end = min(start + step, usable)
        encoder.encode(left[start:end], right[start:end])
        out += encoder.pages()
    out += encoder.close(usable)
    return bytes(out), time.process_time() - started


def decoded(data: bytes, directory: Path) -> Pcm:
    path = directory / "take.opus"
    path.write_bytes(data)
    samples, _ = decode_file(path, RATE)
    return samples


def mb_per_hour(data: bytes, samples: int) -> float:
    return len(data) / (samples / RATE / 3600) / 1e6


def signals(seconds: float) -> dict[str, tuple[Pcm, Pcm]]:
    n = np.arange(int(seconds * RATE), dtype=np.float64)
    tones = tuple(g711(np.round(0.5 * 32767 * np.sin(2 * np.pi * hz * n / RATE))
                       .astype(np.int16)) for hz in (NEAR_HZ, FAR_HZ))
    count = int(SPEECH_S * RATE)
    near, far = (g711(np.resize(espeak(text), count)) for text in (NEAR_TEXT, FAR_TEXT))
    turns = (np.arange(count) // int(TURN_S * RATE)) % 2 == 0
    silent = np.zeros(count, dtype=np.int16)
    return {"tone": (tones[0], tones[1]), "speech": (near, far),
            "talk": (np.where(turns, near, silent).astype(np.int16),
                     np.where(turns, silent, far).astype(np.int16))}


def measure(settings: Sequence[Setting], seconds: float, runs: int) -> list[Row]:
    audio = signals(seconds)
    rows = [Row(setting) for setting in settings]
    with tempfile.TemporaryDirectory(prefix="callrec-opus-") as tmp:
        for round_ in range(runs):
            for row in rows:  # interleaved: machine noise hits every candidate alike
                took = 0.0
                taken: dict[str, bytes] = {}
                for name, (left, right) in audio.items():
                    taken[name], cpu = encode(row.setting, left, right)
                    took += cpu
                row.cpu.append(took)
                if round_:
                    continue
                tone = decoded(taken["tone"], Path(tmp))
                speech = decoded(taken["speech"], Path(tmp))
                near, far = audio["speech"]
                row.tone_mb = mb_per_hour(taken["tone"], audio["tone"][0].size)
                row.tone_drops = dropouts(tone[0]) + dropouts(tone[1])
                row.speech_mb = mb_per_hour(taken["speech"], near.size)
                row.stoi = (aligned_stoi(near, speech[0]), aligned_stoi(far, speech[1]))
                row.estoi = (aligned_stoi(near, speech[0], extended=True),
                             aligned_stoi(far, speech[1], extended=True))
                row.talk_mb = mb_per_hour(taken["talk"], audio["talk"][0].size)
    return rows


def table(rows: Sequence[Row], seconds: float) -> str:
    base = statistics.median(rows[0].cpu)
    lines = [f"| setting | mode | bit/s | cx | frame ms | tones MB/h | tone dropouts "
             f"({seconds:g} s) | speech MB/h | STOI near / far | ESTOI near / far | "
             "conversation MB/h | CPU x default |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        s = row.setting
        lines.append(f"| {s.name} | {s.mode} | {s.bitrate} | {s.complexity} | {s.frame_ms} | "
                     f"{row.tone_mb:.2f} | {row.tone_drops} | {row.speech_mb:.2f} | "
                     f"{row.stoi[0]:.3f} / {row.stoi[1]:.3f} | "
                     f"{row.estoi[0]:.3f} / {row.estoi[1]:.3f} | {row.talk_mb:.2f} | "
                     f"{statistics.median(row.cpu) / base:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the tone call")
    parser.add_argument("--runs", type=int, default=3, help="interleaved rounds for the CPU")
    parser.add_argument("--only", action="append", default=[],
                        help="keep the settings whose name contains this (repeatable)")
    args = parser.parse_args(argv)
    settings = candidates()
    if args.only:
        settings = settings[:1] + [s for s in settings[1:]
                                   if any(part in s.name for part in args.only)]
    result = table(measure(settings, args.seconds, args.runs), args.seconds)
    print(f"baseline (first row): the node's default, {NARROWBAND_MODE}, {OPUS_BITRATE} bit/s, "
          f"complexity {OPUS_COMPLEXITY}, {OPUS_FRAME_MS} ms frames, measured in the same run")
    print(result)
    return result


if __name__ == "__main__":
    main()
