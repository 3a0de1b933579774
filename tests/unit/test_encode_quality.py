"""What capture's encoding keeps of a call: speech intelligibility (STOI) and tones.

Speech is synthesised with espeak-ng, sent as G.711 (PCMU) RTP into a fabricated
capture directory, encoded by the live encoder as capture runs it (steps every 0.5 s,
then finish, at the node's default bitrate) and decoded again. STOI compares each
channel with the G.711 original, i.e. it measures only what the Opus encoding loses.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from callrec.audio import (
    decode_file,
    dominant_frequency,
    opus_input_rate,
    pcmu_decode,
    pcmu_encode,
    sound_seconds,
)
from callrec.config import NodeConfig
from callrec.opus import OpusMode
from services.capture.finalize import stream_specs
from services.capture.live import (
    LIVE_FILE,
    NARROWBAND_RATE,
    WIDEBAND_RATE,
    LiveEncoder,
    StreamSpec,
    encoding_rate,
    worker_step,
)
from services.capture.manifest import RecordingManifest
from tests.support.callgen import FAR_HZ, NEAR_HZ, encode_as_capture, make_recording
from tests.support.opus_toc import file_packets, stream_modes
from tests.support.speech import FAR_TEXT, NEAR_TEXT, aligned_stoi, espeak

RATE = 8000
STOI_MIN = 0.85

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng missing (scripts/test installs it)")


def _record(directory: Path, mode: OpusMode | None = None) -> npt.NDArray[np.int16]:
    """Capture's live encoding of the fabricated call, decoded at 8 kHz: (2, n)."""
    path = encode_as_capture(directory, NodeConfig.model_fields["opus_bitrate"].default,
                             mode=mode)
    decoded, rate = decode_file(path, RATE)
    assert rate == RATE
    return decoded


@needs_espeak
def test_speech_keeps_stoi_on_both_channels(tmp_path: Path) -> None:
    near = espeak(NEAR_TEXT)
    far = espeak(FAR_TEXT)
    seconds = max(near.size, far.size) / RATE + 0.5
    directory = make_recording(tmp_path / "rec", seconds, signals={"near": near, "far": far})
    decoded = _record(directory)
    for channel, original in ((0, near), (1, far)):
        g711 = pcmu_decode(pcmu_encode(original))  # what the recorder received
        score = aligned_stoi(g711, decoded[channel])
        assert score >= STOI_MIN, f"channel {channel}: STOI {score:.3f}"
    # The channels stay apart: the near talker is not in the far channel.
    assert aligned_stoi(pcmu_decode(pcmu_encode(near)), decoded[1]) < 0.5


@pytest.mark.parametrize("mode", [None, "auto"])
def test_tones_survive_narrowband_encoding(tmp_path: Path, mode: OpusMode | None) -> None:
    directory = make_recording(tmp_path / "rec", 3.0)
    assert {s.payload_codecs[0] for s in stream_specs(RecordingManifest.load(directory))} == {
        "PCMU"}
    decoded = _record(directory, mode)
    # The node's default codes in CELT; --opus-mode auto leaves it to libopus (SILK).
    modes = {m for p in file_packets(directory / LIVE_FILE) for m in stream_modes(p)}
    assert modes == ({"silk"} if mode == "auto" else {"celt"})
    middle = decoded[:, RATE // 2: -RATE // 2]
    assert dominant_frequency(middle[0], RATE) == pytest.approx(NEAR_HZ, abs=5)
    assert dominant_frequency(middle[1], RATE) == pytest.approx(FAR_HZ, abs=5)
    # Sound all along (a tone is never lost or muted by the encoder).
    for channel in decoded:
        assert sound_seconds(channel, RATE) == pytest.approx(3.0, abs=0.1)
    assert NARROWBAND_RATE == RATE  # G.711 alone: encoded narrowband


def test_the_encoding_rate_follows_the_negotiated_codecs() -> None:
    def spec(**codecs: str) -> StreamSpec:
        return StreamSpec("s", 0, {int(pt[2:]): name for pt, name in codecs.items()})

    assert encoding_rate([spec(pt0="PCMU"), spec(pt8="pcma/8000")]) == NARROWBAND_RATE
    assert encoding_rate([spec(pt18="G729", pt101="telephone-event")]) == NARROWBAND_RATE
    assert encoding_rate([spec(pt0="PCMU"), spec(pt9="G722")]) == WIDEBAND_RATE
    assert encoding_rate([spec(pt96="G.722/8000")]) == WIDEBAND_RATE
    assert encoding_rate([]) == NARROWBAND_RATE


def test_no_codec_yet_no_file_and_a_resumed_file_keeps_its_rate(tmp_path: Path) -> None:
    directory = make_recording(tmp_path / "rec", 2.0)
    bare = [StreamSpec("near", 0, {}), StreamSpec("far", 1, {})]
    assert worker_step(directory, "rec-gen", bare, 1_000.0, 16_000) == (None, 0)
    assert not (directory / LIVE_FILE).exists()
    wide = LiveEncoder(directory, "rec-gen", rate=WIDEBAND_RATE)
    wide.step(stream_specs(RecordingManifest.load(directory)), 1_500.0)
    wide.close()
    assert opus_input_rate(directory / LIVE_FILE) == WIDEBAND_RATE
    resumed = LiveEncoder(directory, "rec-gen", rate=NARROWBAND_RATE)
    assert resumed.rate == WIDEBAND_RATE and resumed.cursor > 0
    resumed.close()


def test_a_file_with_20_ms_frames_goes_on_with_60_ms_frames(tmp_path: Path) -> None:
    """A recording in progress when capture is upgraded: written with 20 ms frames at
    16 kHz (the settings before issue 11), resumed and finished by today's encoder."""
    directory = make_recording(tmp_path / "rec", 4.0)
    specs = stream_specs(RecordingManifest.load(directory))
    old = LiveEncoder(directory, "rec-gen", rate=WIDEBAND_RATE, complexity=5, frame_ms=20)
    old.step(specs, 1_970.0)
    old.close()
    resumed = LiveEncoder(directory, "rec-gen")
    assert resumed.cursor % 960  # not on a 60 ms boundary at 16 kHz
    resumed.step(specs, 3_000.0)
    resumed.finish(specs, 4_000)
    decoded, rate = decode_file(directory / LIVE_FILE, WIDEBAND_RATE)
    assert abs(decoded.shape[1] - 4 * rate) <= rate // 50
    middle = decoded[:, rate // 2: -rate // 2]
    assert dominant_frequency(middle[0], rate) == pytest.approx(NEAR_HZ, abs=5)
    assert dominant_frequency(middle[1], rate) == pytest.approx(FAR_HZ, abs=5)


def test_the_opus_mode_is_the_nodes_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    from callrec.cli import build_parser, config_from_args

    def mode(*argv: str) -> str:
        return config_from_args(build_parser().parse_args(["up", *argv])).opus_mode

    monkeypatch.delenv("CALLREC_OPUS_MODE", raising=False)
    assert mode() == "celt"
    assert mode("--opus-mode", "auto") == "auto"
    monkeypatch.setenv("CALLREC_OPUS_MODE", "auto")
    assert mode() == "auto"
    with pytest.raises(SystemExit):  # argparse names the choices
        mode("--opus-mode", "silk")
