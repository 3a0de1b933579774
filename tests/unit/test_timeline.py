"""Unit tests for services.capture.timeline (finalize-time RTP -> PCM)."""

from __future__ import annotations

import random
import struct
import time

import av
import numpy as np
import pytest
from aiortc.rtp import RtpPacket
from hypothesis import given, settings
from hypothesis import strategies as st

from callrec import native
from callrec.audio import (
    PCMA_DECODE_TABLE,
    PCMU_DECODE_TABLE,
    dominant_frequency,
    pcma_encode,
    pcmu_decode,
    pcmu_encode,
    tone,
)
from services.capture.timeline import (
    RtpRecord,
    RunPacket,
    build_channel,
    dedupe_run,
    parse_record,
    parse_telephone_event,
    resample,
    split_runs,
    unwrap,
)

CODECS = {0: "PCMU", 8: "PCMA", 9: "G722", 18: "G729", 101: "telephone-event"}
OUT = 16000
PTIME = 20
SPP = 160  # samples per 20 ms packet at 8 kHz


def rtp(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: int = 0) -> bytes:
    return RtpPacket(
        payload_type=pt,
        marker=marker,
        sequence_number=seq & 0xFFFF,
        timestamp=ts & 0xFFFFFFFF,
        ssrc=ssrc,
        payload=payload,
    ).serialize()


def stream(
    payload: bytes,
    *,
    start_ms: int,
    seq0: int = 1000,
    ts0: int = 50000,
    ssrc: int = 0x1234,
    pt: int = 0,
    bytes_per_packet: int = SPP,
) -> list[tuple[int, bytes]]:
    """Packetise an encoded payload as 20 ms packets arriving on time."""
    out = []
    for i in range(len(payload) // bytes_per_packet):
        chunk = payload[i * bytes_per_packet : (i + 1) * bytes_per_packet]
        out.append((start_ms + PTIME * i, rtp(pt, seq0 + i, ts0 + SPP * i, ssrc, chunk)))
    return out


def upsampled(samples: np.ndarray) -> np.ndarray:
    return np.clip(np.round(resample(samples, 8000, OUT)), -32768, 32767).astype(np.int16)


@pytest.fixture(scope="module")
def tone_1k() -> bytes:
    return pcmu_encode(tone(1000, 2.0, 8000))


def test_in_order_stream_exact_length_and_position(tone_1k: bytes) -> None:
    result = build_channel(stream(tone_1k, start_ms=500), CODECS, 4000)
    samples = result.samples
    assert samples.dtype == np.int16
    assert samples.size == 4000 * OUT // 1000
    start = 500 * OUT // 1000
    end = start + 2 * OUT
    assert not samples[:start].any()
    assert not samples[end:].any()
    expected = upsampled(pcmu_decode(tone_1k))
    np.testing.assert_array_equal(samples[start:end], expected)
    assert dominant_frequency(samples[start:end], OUT) == pytest.approx(1000, abs=2)
    stats = result.stats
    assert stats.packets_received == 100
    assert (stats.packets_invalid, stats.packets_duplicate, stats.packets_lost) == (0, 0, 0)
    assert stats.codecs == ["PCMU"]
    assert result.first_arrival_ms == 500
    assert result.last_arrival_ms == 500 + 99 * PTIME
    assert result.dtmf == []


def test_exact_length_for_odd_durations() -> None:
    for duration, rate in [(0, 16000), (1, 16000), (999, 8000), (1234, 48000)]:
        result = build_channel([], CODECS, duration, out_rate=rate)
        assert result.samples.size == duration * rate // 1000
        assert result.first_arrival_ms is None


def test_resampled_1khz_tone_is_clean(tone_1k: bytes) -> None:
    samples = build_channel(stream(tone_1k, start_ms=0), CODECS, 2000).samples
    seg = samples[1600:-1600].astype(np.float64)
    power = np.abs(np.fft.rfft(seg * np.hanning(seg.size))) ** 2
    freqs = np.fft.rfftfreq(seg.size, 1 / OUT)
    image_db = 10 * np.log10(power[freqs > 4500].sum() / power.sum())
    assert image_db < -60


def test_8k_output_is_bit_exact_g711(tone_1k: bytes) -> None:
    result = build_channel(stream(tone_1k, start_ms=100), CODECS, 3000, out_rate=8000)
    np.testing.assert_array_equal(result.samples[800 : 800 + 16000], pcmu_decode(tone_1k))


def test_jitter_anchors_on_least_delayed_packet(tone_1k: bytes) -> None:
    clean = build_channel(stream(tone_1k, start_ms=300), CODECS, 3000).samples
    rng = random.Random(7)
    jittered = [
        (t + (0 if i == 40 else rng.randint(1, 60)), d)
        for i, (t, d) in enumerate(stream(tone_1k, start_ms=300))
    ]
    np.testing.assert_array_equal(build_channel(jittered, CODECS, 3000).samples, clean)


def test_reordered_equals_in_order(tone_1k: bytes) -> None:
    records = stream(tone_1k, start_ms=200)
    clean = build_channel(records, CODECS, 3000)
    # Even packets arrive 30 ms late, i.e. after their successor.
    reordered = [(t + 30 if i % 2 == 0 and i > 0 else t, d) for i, (t, d) in enumerate(records)]
    reordered.sort(key=lambda r: r[0])
    random.Random(3).shuffle(reordered)  # storage order must not matter either
    result = build_channel(reordered, CODECS, 3000)
    np.testing.assert_array_equal(result.samples, clean.samples)
    assert result.stats.packets_lost == 0
    assert result.stats.packets_duplicate == 0


def test_loss_leaves_silence_exactly_there(tone_1k: bytes) -> None:
    records = stream(tone_1k, start_ms=200)
    clean = build_channel(records, CODECS, 3000).samples
    lost = set(range(10, 15))
    result = build_channel([r for i, r in enumerate(records) if i not in lost], CODECS, 3000)
    gap_start = (200 + 10 * PTIME) * OUT // 1000
    gap_end = (200 + 15 * PTIME) * OUT // 1000
    assert not result.samples[gap_start:gap_end].any()
    assert result.samples[gap_start - 40 : gap_start].any()
    assert result.samples[gap_end : gap_end + 40].any()
    # Away from the span edges (filter support) the audio is unchanged.
    margin = 40
    np.testing.assert_array_equal(result.samples[: gap_start - margin], clean[: gap_start - margin])
    np.testing.assert_array_equal(result.samples[gap_end + margin :], clean[gap_end + margin :])
    assert result.stats.packets_lost == 5


def test_duplicates_dropped_and_counted(tone_1k: bytes) -> None:
    records = stream(tone_1k, start_ms=200)
    clean = build_channel(records, CODECS, 3000).samples
    dups = [(t + 5, d) for t, d in records[20:30]]
    result = build_channel(records + dups, CODECS, 3000)
    np.testing.assert_array_equal(result.samples, clean)
    assert result.stats.packets_duplicate == 10
    assert result.stats.packets_received == 110


def test_ssrc_change_placed_by_arrival() -> None:
    first = pcmu_encode(tone(1000, 1.0, 8000))
    second = pcmu_encode(tone(440, 1.0, 8000))
    records = stream(first, start_ms=100, ssrc=1, seq0=10, ts0=1000)
    records += stream(second, start_ms=1600, ssrc=2, seq0=51234, ts0=3_000_000_000)
    result = build_channel(records, CODECS, 3000)
    s = result.samples
    assert dominant_frequency(s[100 * 16 : 1100 * 16], OUT) == pytest.approx(1000, abs=2)
    assert not s[1100 * 16 : 1600 * 16].any()
    assert dominant_frequency(s[1600 * 16 : 2600 * 16], OUT) == pytest.approx(440, abs=2)
    assert not s[2600 * 16 :].any()
    assert result.stats.ssrc_changes == 1
    assert result.stats.packets_lost == 0


def test_stragglers_after_ssrc_change_join_old_run() -> None:
    first = pcmu_encode(tone(1000, 1.0, 8000))
    second = pcmu_encode(tone(440, 1.0, 8000))
    a = stream(first, start_ms=100, ssrc=1)
    b = stream(second, start_ms=1100, ssrc=2, seq0=7, ts0=99)
    # The last packet of A arrives after the first two of B.
    late_t, late_d = a[-1]
    records = a[:-1] + b[:2] + [(late_t + 45, late_d)] + b[2:]
    result = build_channel(records, CODECS, 2500)
    clean = build_channel(a + b, CODECS, 2500)
    np.testing.assert_array_equal(result.samples, clean.samples)
    assert result.stats.ssrc_changes == 1


@pytest.mark.parametrize("ts_jump", [3000 * 8, 123_456_789])
def test_hold_gap_keeps_later_audio_in_place(ts_jump: int) -> None:
    """2 s without packets; timestamps either continue or jump arbitrarily."""
    before = pcmu_encode(tone(1000, 1.0, 8000))
    after = pcmu_encode(tone(440, 1.0, 8000))
    records = stream(before, start_ms=0, seq0=100, ts0=0)
    records += stream(after, start_ms=3000, seq0=150, ts0=ts_jump)
    result = build_channel(records, CODECS, 5000)
    s = result.samples
    assert dominant_frequency(s[: 1000 * 16], OUT) == pytest.approx(1000, abs=2)
    assert not s[1000 * 16 : 3000 * 16].any()
    assert s[3000 * 16 : 3000 * 16 + 40].any()
    assert dominant_frequency(s[3000 * 16 : 4000 * 16], OUT) == pytest.approx(440, abs=2)
    assert not s[4000 * 16 :].any()
    assert result.stats.packets_lost == 0
    assert result.stats.ssrc_changes == 0


def test_codec_change_pcmu_to_pcma() -> None:
    audio = tone(1000, 2.0, 8000)
    mu = pcmu_encode(audio[:8000])
    a = pcma_encode(audio[8000:])
    records = stream(mu, start_ms=0, pt=0)
    records += stream(a, start_ms=1000, pt=8, seq0=1000 + 50, ts0=50000 + 8000)
    result = build_channel(records, CODECS, 2000)
    decoded = np.concatenate(
        [
            PCMU_DECODE_TABLE[np.frombuffer(mu, np.uint8)],
            PCMA_DECODE_TABLE[np.frombuffer(a, np.uint8)],
        ]
    )
    np.testing.assert_array_equal(result.samples, upsampled(decoded))
    assert result.stats.codecs == ["PCMA", "PCMU"]
    assert result.stats.unknown_payload == 0


def _g722_encode(samples16k: np.ndarray) -> bytes:
    ctx = av.CodecContext.create("g722", "w")
    assert isinstance(ctx, av.AudioCodecContext)
    ctx.sample_rate = 16000
    ctx.layout = "mono"
    ctx.format = "s16"
    frame = av.AudioFrame.from_ndarray(samples16k.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 16000
    return b"".join(bytes(p) for p in ctx.encode(frame)) + b"".join(
        bytes(p) for p in ctx.encode(None)
    )


def test_g722_stream_decodes_wideband() -> None:
    payload = _g722_encode(tone(5000, 1.0, 16000))  # above narrowband Nyquist
    assert len(payload) == 8000
    records = stream(payload, start_ms=250, pt=9)
    result = build_channel(records, CODECS, 1500)
    start = 250 * 16
    ref_ctx = av.CodecContext.create("g722", "r")
    assert isinstance(ref_ctx, av.AudioCodecContext)
    ref_ctx.sample_rate = 16000
    ref_ctx.layout = "mono"
    reference = np.concatenate([f.to_ndarray()[0] for f in ref_ctx.decode(av.Packet(payload))])
    np.testing.assert_array_equal(result.samples[start : start + 16000], reference)
    assert not result.samples[:start].any()
    assert not result.samples[start + 16000 :].any()
    assert dominant_frequency(result.samples[start + 800 : start + 15000], OUT) == pytest.approx(
        5000, abs=5
    )
    assert result.stats.codecs == ["G722"]


def test_g729_frames_and_sid_decode() -> None:
    records = [
        (0, rtp(18, 1, 0, 9, bytes(range(20)))),  # 2 frames -> 20 ms
        (20, rtp(18, 2, 160, 9, bytes(range(10)) + b"\x01\x02")),  # frame + SID
        (40, rtp(18, 3, 320, 9, b"\x00" * 7)),  # bad length -> undecodable
    ]
    result = build_channel(records, CODECS, 100)
    assert result.samples[:320].any()
    assert result.stats.unknown_payload == 1
    assert result.stats.codecs == ["G729"]


def test_garbage_counted_and_skipped(tone_1k: bytes) -> None:
    records = stream(tone_1k, start_ms=0)
    clean = build_channel(records, CODECS, 2500).samples
    rtcp = struct.pack("!BBHI", 0x80, 200, 6, 0x1234) + bytes(20)
    bad_version = bytes([0x40]) + rtp(0, 1, 1, 1, b"xx")[1:]
    truncated_csrc = bytes([0x8F]) + rtp(0, 1, 1, 1, b"")[1:]
    bad_padding = bytes([0xA0]) + rtp(0, 1, 1, 1, b"ab\x00")[1:]
    garbage = [
        (10, b""),
        (30, b"\x80\x00"),
        (50, bytes(range(256))),
        (70, rtcp),
        (90, bad_version),
        (110, truncated_csrc),
        (130, bad_padding),
        (150, b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12)),  # STUN
    ]
    result = build_channel(records + garbage, CODECS, 2500)
    np.testing.assert_array_equal(result.samples, clean)
    assert result.stats.packets_invalid == len(garbage)
    assert result.stats.packets_received == len(records) + len(garbage)


def test_unknown_payload_and_outside_packets(tone_1k: bytes) -> None:
    records = stream(tone_1k, start_ms=0)
    clean = build_channel(records, CODECS, 2500).samples
    extra = [
        (300, rtp(96, 5, 5, 0x1234 + 1, b"opus?")),  # PT not in the map
        (-5, rtp(0, 999, 0, 0x1234, bytes(160))),
        (2500, rtp(0, 1100, 0, 0x1234, bytes(160))),
    ]
    result = build_channel(records + extra, CODECS, 2500)
    np.testing.assert_array_equal(result.samples, clean)
    assert result.stats.unknown_payload == 1
    assert result.stats.packets_outside == 2


def _dtmf_packets(
    event: int, start_ts: int, seq0: int, t0: int, ssrc: int, total: int, end_same_seq: bool
) -> list[tuple[int, bytes]]:
    out = []
    seq = seq0
    durations = list(range(SPP, total, SPP))
    for i, dur in enumerate(durations):
        payload = bytes([event, 10]) + dur.to_bytes(2, "big")
        out.append(
            (t0 + PTIME * (i + 1), rtp(101, seq, start_ts, ssrc, payload, marker=int(i == 0)))
        )
        seq += 1
    end_payload = bytes([event, 0x80 | 10]) + total.to_bytes(2, "big")
    t_end = t0 + PTIME * (len(durations) + 1)
    for k in range(3):
        out.append((t_end + k, rtp(101, seq, start_ts, ssrc, end_payload)))
        if not end_same_seq:
            seq += 1
    return out


@pytest.mark.parametrize("end_same_seq", [True, False])
def test_dtmf_events_parsed_and_not_in_audio(end_same_seq: bool) -> None:
    audio = pcmu_encode(tone(1000, 1.0, 8000))
    records = stream(audio, start_ms=0, seq0=10, ts0=0)  # 0..1000 ms
    # '5' at 1000 ms lasting 100 ms, '#' at 1500 ms lasting 240 ms, 'D' at 2000 ms.
    records += _dtmf_packets(5, 8000, 60, 1000, 0x1234, 800, end_same_seq)
    records += _dtmf_packets(11, 12000, 80, 1500, 0x1234, 1920, end_same_seq)
    records += _dtmf_packets(15, 16000, 100, 2000, 0x1234, 400, end_same_seq)
    result = build_channel(records, CODECS, 3000)
    digits = [(e.digit, e.start_ms, e.duration_ms) for e in result.dtmf]
    assert digits == [("5", 1000, 100), ("#", 1500, 240), ("D", 2000, 50)]
    assert not result.samples[1000 * 16 :].any()
    assert result.stats.codecs == ["PCMU", "telephone-event"]
    assert result.stats.unknown_payload == 0


def test_dtmf_only_stream_gives_silence() -> None:
    records = _dtmf_packets(1, 777, 5, 400, 42, 1600, False)
    result = build_channel(records, CODECS, 2000)
    assert not result.samples.any()
    assert [(e.digit, e.start_ms, e.duration_ms) for e in result.dtmf] == [("1", 420, 200)]


def test_long_dtmf_does_not_split_run() -> None:
    """A 3 s key press keeps its start timestamp while arrival advances."""
    head = pcmu_encode(tone(1000, 0.5, 8000))
    tail = pcmu_encode(tone(440, 0.5, 8000))
    records = stream(head, start_ms=0, seq0=10, ts0=0)  # seq 10..34
    dtmf = _dtmf_packets(2, 4000, 35, 480, 0x1234, 24000, False)  # seq 35..185
    next_seq = 35 + len(dtmf)
    records += dtmf
    records += stream(tail, start_ms=3540, seq0=next_seq, ts0=3540 * 8)
    result = build_channel(records, CODECS, 4500)
    assert [(e.digit, e.start_ms, e.duration_ms) for e in result.dtmf] == [("2", 500, 3000)]
    s = result.samples
    assert not s[500 * 16 : 3540 * 16].any()
    assert s[3540 * 16 : 3540 * 16 + 40].any()
    assert dominant_frequency(s[3540 * 16 : 4040 * 16], OUT) == pytest.approx(440, abs=3)
    assert result.stats.packets_lost == 0
    runs = split_runs(
        [r for r in (parse_record(t, d) for t, d in records) if r is not None],
        {0: "PCMU", 101: "telephone-event"},
    )
    assert len(runs) == 1


def test_sequence_and_timestamp_wraparound(tone_1k: bytes) -> None:
    reference = build_channel(stream(tone_1k, start_ms=100), CODECS, 2500)
    wrapped = stream(tone_1k, start_ms=100, seq0=65500, ts0=2**32 - SPP * 30)
    result = build_channel(wrapped, CODECS, 2500)
    np.testing.assert_array_equal(result.samples, reference.samples)
    assert result.stats.packets_lost == 0
    assert result.stats.ssrc_changes == 0
    # ...and with reordering across the wrap point.
    swapped = list(wrapped)
    swapped[35] = (swapped[36][0] + 1, swapped[35][1])  # seq 65535 arrives after 0
    assert np.array_equal(build_channel(swapped, CODECS, 2500).samples, reference.samples)


def test_overlapping_packets_later_wins() -> None:
    first = pcmu_encode(np.full(SPP, 1000, dtype=np.int16))
    second = pcmu_encode(np.full(SPP, -2000, dtype=np.int16))
    records = [
        (0, rtp(0, 1, 0, 5, first)),
        (10, rtp(0, 2, 80, 5, second)),  # overlaps the second half of packet 1
    ]
    result = build_channel(records, CODECS, 100, out_rate=8000)
    s = result.samples
    assert (s[:80] == PCMU_DECODE_TABLE[first[0]]).all()
    assert (s[80:240] == PCMU_DECODE_TABLE[second[0]]).all()


def test_audio_clipped_to_recording(tone_1k: bytes) -> None:
    result = build_channel(stream(tone_1k, start_ms=1500), CODECS, 2000)
    assert result.samples.size == 32000
    assert not result.samples[: 1500 * 16].any()
    assert result.samples[-10:].any()


def test_g711_tables_match_pyav() -> None:
    for name, table in (("pcm_mulaw", PCMU_DECODE_TABLE), ("pcm_alaw", PCMA_DECODE_TABLE)):
        ctx = av.CodecContext.create(name, "r")
        assert isinstance(ctx, av.AudioCodecContext)
        ctx.sample_rate = 8000
        ctx.layout = "mono"
        frames = ctx.decode(av.Packet(bytes(range(256))))
        decoded = np.concatenate([f.to_ndarray()[0] for f in frames])
        np.testing.assert_array_equal(decoded, table)


def test_unwrap() -> None:
    assert unwrap(0, 65535, 16) == 65536
    assert unwrap(65535, 65536, 16) == 65535
    assert unwrap(5, 10, 16) == 5
    assert unwrap(10, 2**32 - 10, 32) == 2**32 + 10
    assert unwrap(2**32 - 1, 0, 32) == -1


def test_parse_record_and_telephone_event() -> None:
    rec = parse_record(12, rtp(0, 7, 99, 3, b"abc"))
    assert rec == RtpRecord(12.0, 3, 7, 99, 0, b"abc")
    assert parse_record(0, b"\x80" * 11) is None
    assert parse_telephone_event(b"\x0b\x8a\x03\x20") == (11, True, 800)
    assert parse_telephone_event(b"\x0b") is None


def test_split_runs_and_dedupe() -> None:
    recs = [
        RtpRecord(0.0, 1, 10, 0, 0, b"x"),
        RtpRecord(20.0, 1, 11, 160, 0, b"x"),
        RtpRecord(3000.0, 1, 12, 320, 0, b"x"),  # clock stopped while on hold
        RtpRecord(3020.0, 1, 13, 480, 0, b"x"),
        RtpRecord(3025.0, 1, 13, 480, 0, b"x"),
    ]
    runs = split_runs(recs, {0: "PCMU"})
    assert [len(r.packets) for r in runs] == [2, 3]
    unique, dups, lost = dedupe_run(runs[1].packets)
    assert (len(unique), dups, lost) == (2, 1, 0)
    unique, dups, lost = dedupe_run(
        [RunPacket(1, 0, 0.0, "PCMU", b""), RunPacket(5, 0, 0.0, "PCMU", b"")]
    )
    assert (dups, lost) == (0, 3)


def test_resample_lengths_and_alignment() -> None:
    x = np.zeros(400)
    x[200] = 1000.0
    up = resample(x, 8000, 16000)
    assert up.size == 800
    assert int(np.argmax(up)) == 400
    down = resample(up, 16000, 8000)
    assert down.size == 400
    assert int(np.argmax(down)) == 200
    assert resample(x, 8000, 44100).size == 400 * 44100 // 8000
    assert resample(np.zeros(0), 8000, 16000).size == 0


def test_sixty_seconds_is_fast() -> None:
    payload = pcmu_encode(tone(440, 60.0, 8000))
    rng = random.Random(1)
    records = [(t + rng.randint(0, 30), d) for t, d in stream(payload, start_ms=0)]
    assert len(records) == 3000
    build_channel(records[:50], CODECS, 1000)  # warm caches
    best = min(_timed(records) for _ in range(3))
    assert best < 0.2


def _timed(records: list[tuple[int, bytes]]) -> float:
    start = time.perf_counter()
    build_channel(records, CODECS, 61000)
    return time.perf_counter() - start


# -------------------------------------------------------------------- codec not in the answer


@pytest.mark.parametrize(
    ("pt", "encode"),
    [(0, pcmu_encode), (8, pcma_encode)],
)
def test_static_payload_type_decoded_though_the_answer_listed_another(
    pt: int, encode: object
) -> None:
    """CUCM answered PCMU only (0 + 101) and sent PCMA on PT 8: still recorded."""
    assert callable(encode)
    payload = encode(tone(700, 1.0, 8000))
    answer_only = {0: "PCMU", 101: "telephone-event"}
    result = build_channel(stream(payload, start_ms=0, pt=pt), answer_only, 1200)
    assert dominant_frequency(result.samples[800:15000], OUT) == pytest.approx(700, abs=5)
    assert result.stats.silent_reason is None
    assert result.stats.packets_decoded == 50
    assert result.stats.unknown_payload == 0
    assert result.stats.codecs == [{0: "PCMU", 8: "PCMA"}[pt]]


def test_static_g722_decoded_without_any_negotiated_map() -> None:
    encoder = av.CodecContext.create("g722", "w")
    assert isinstance(encoder, av.AudioCodecContext)
    encoder.sample_rate = 16000
    encoder.layout = "mono"
    encoder.format = "s16"
    pcm = tone(1200, 1.0, 16000)
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 16000
    payload = b"".join(bytes(p) for p in encoder.encode(frame)) + b"".join(
        bytes(p) for p in encoder.encode(None)
    )
    result = build_channel(stream(payload, start_ms=0, pt=9), {}, 1200)
    assert dominant_frequency(result.samples[800:15000], OUT) == pytest.approx(1200, abs=5)
    assert result.stats.codecs == ["G722"]


def test_an_sdp_rtpmap_wins_over_the_static_meaning(tone_1k: bytes) -> None:
    """A payload type the SDP maps explicitly keeps that mapping."""
    result = build_channel(stream(tone_1k, start_ms=0, pt=8), {8: "PCMU"}, 2100)
    expected = upsampled(pcmu_decode(tone_1k))
    np.testing.assert_array_equal(result.samples[: expected.size], expected)


def test_dynamic_payload_type_without_rtpmap_is_flagged_not_guessed(tone_1k: bytes) -> None:
    result = build_channel(stream(tone_1k, start_ms=0, pt=96), {0: "PCMU"}, 2100)
    assert not result.samples.any()
    stats = result.stats
    assert stats.silent_reason == "undecodable"
    assert stats.unknown_payload_types == [96]
    assert stats.unknown_payload == 100
    assert stats.packets_decoded == 0


def test_codec_failing_on_every_packet_is_flagged() -> None:
    records = [(20 * i, rtp(18, i, 160 * i, 7, b"\x00" * 7)) for i in range(10)]
    stats = build_channel(records, {}, 400).stats
    assert stats.silent_reason == "undecodable"
    assert stats.unknown_payload_types == []
    assert stats.unknown_payload == 10


def test_silent_reasons_for_nothing_garbage_and_dtmf() -> None:
    assert build_channel([], CODECS, 500).stats.silent_reason == "no_packets"
    garbage = [(10, b"\x80\x00"), (20, bytes(range(40)))]
    assert build_channel(garbage, CODECS, 500).stats.silent_reason == "not_rtp"
    late = [(900, rtp(0, 1, 0, 1, bytes(160)))]
    assert build_channel(late, CODECS, 500).stats.silent_reason == "not_rtp"
    dtmf = [(20 * i, rtp(101, i, 0, 5, bytes([5, 0x80 if i == 3 else 0, 0, 40 * i])))
            for i in range(4)]
    stats = build_channel(dtmf, CODECS, 500).stats
    assert stats.silent_reason == "dtmf_only"


def test_partly_undecodable_stream_is_not_silent(tone_1k: bytes) -> None:
    records = [*stream(tone_1k, start_ms=0), (500, rtp(97, 3, 3, 153, b"x" * 20))]
    stats = build_channel(records, CODECS, 2100).stats
    assert stats.silent_reason is None
    assert stats.unknown_payload_types == [97]
    assert stats.packets_decoded == 100


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=0, max_size=80), st.integers(0, 15), st.booleans(), st.booleans())
def test_parse_record_reads_what_aiortc_reads(body: bytes, cc: int, ext: bool,
                                              pad: bool) -> None:
    """The in-place header reader accepts and extracts exactly what aiortc's parser does
    (random CSRC counts, extension and padding flags over random bytes)."""
    data = bytes([0x80 | (0x20 if pad else 0) | (0x10 if ext else 0) | cc, 0x08]) + \
        b"\x12\x34" + b"\x00\x00\x10\x00" + b"\xab\xcd\xef\x01" + body
    try:
        packet = RtpPacket.parse(data)
    except (ValueError, IndexError, struct.error):
        assert parse_record(0, data) is None
        return
    rec = parse_record(0, data)
    assert rec is not None
    assert (rec.ssrc, rec.seq, rec.ts, rec.pt, rec.payload) == (
        packet.ssrc, packet.sequence_number, packet.timestamp, packet.payload_type,
        bytes(packet.payload))


def _messy_stream(rng: random.Random) -> list[tuple[int, bytes]]:
    """Arrival-ordered records with everything the general path handles: loss, jitter,
    late packets, duplicates, SSRC changes, clock resets, holds, PCMU/PCMA switches,
    DTMF, unknown payload types, garbage, header extensions and padding."""
    records: list[tuple[int, bytes]] = []
    t = rng.uniform(0, 200)
    ssrc, seq, ts, pt = rng.randrange(1 << 32), rng.randrange(1 << 16), rng.randrange(1 << 32), 0
    for _ in range(1200):
        r = rng.random()
        if r < 0.01:
            ssrc, seq, ts = rng.randrange(1 << 32), rng.randrange(1 << 16), rng.randrange(1 << 32)
        elif r < 0.015:
            ts += rng.randrange(1 << 20)
        elif r < 0.02:
            pt = 8 if pt == 0 else 0
        elif r < 0.03:
            t += rng.uniform(100, 3000)
        seq, ts, t = seq + 1, ts + SPP, t + PTIME
        arrival = int(t + rng.expovariate(1 / 15) + (400 if rng.random() < 0.01 else 0))
        k = rng.random()
        if k < 0.02:
            continue
        if k < 0.03:
            event = bytes([rng.randrange(16), 0x80 * rng.randrange(2), 0, 160])
            records.append((arrival, rtp(101, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc, event)))
            continue
        if k < 0.035:
            records.append((arrival, b"\x01\x02garbage"))
            continue
        data = rtp(96 if k < 0.04 else pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc,
                   rng.randbytes(SPP), marker=int(k < 0.05))
        if k > 0.99:  # a header extension
            data = bytes([data[0] | 0x10]) + data[1:12] + b"\xbe\xde\x00\x01\0\0\0\0" + data[12:]
        elif k > 0.98:  # padding
            data = bytes([data[0] | 0x20]) + data[1:] + b"\0\0\0\x04"
        records.append((arrival, data))
        if k > 0.97:
            records.append((arrival + rng.randrange(80), data))
    records.sort(key=lambda rec: rec[0])
    return records


@pytest.mark.parametrize("seed", range(6))
def test_batched_paths_equal_packet_by_packet(seed: int,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """feed_many, the continuing-run ingest, the sorted-slice takes and the G.711 decode
    of whole runs give exactly what feed and the general per-packet path (heaps popped
    one by one) give, step by step. The general path runs in the interpreted source
    (the timeline may run compiled, whose methods cannot be patched), so this also
    compares the two builds."""
    from services.capture import timeline as compiled

    source = native.load_source("services.capture.timeline")
    rng = random.Random(seed)
    records = _messy_stream(rng)
    rate, step = rng.choice([8000, 16000]), rng.choice([100, 500, 2000])

    def build(batched: bool) -> tuple[np.ndarray, str, str, int]:
        tl = compiled if batched else source
        timeline = tl.StreamTimeline(CODECS, rate)
        out: list[np.ndarray] = []
        index = emitted = 0
        for now in range(step, records[-1][0] + step, step):
            batch = []
            while index < len(records) and records[index][0] <= now + 37:
                batch.append(records[index])
                index += 1
            if batched:
                timeline.feed_many(batch)
            else:
                for arrival, data in batch:
                    timeline.feed(arrival, data)
                # The heaps popped one entry at a time, never taken as sorted slices.
                timeline._pending_sorted = False
                for live in timeline._runs:
                    live.ordered = False
            emit = max((now - 300) * rate // 1000, emitted)
            timeline.advance(now, reorder_ms=150, emit_sample=emit)
            out.append(timeline.take(emit))
            emitted = emit
        result = timeline.finish(records[-1][0] + 500)
        out.append(result.samples)
        return np.concatenate(out), str(result.stats), str(result.dtmf), timeline.packets_late

    batched = build(True)
    monkeypatch.setattr(source.StreamTimeline, "_ingest_continuing", lambda self, recs, i: i)
    monkeypatch.setattr(source, "_G711_TABLES", {})  # every packet through _Decoders (FFmpeg)
    general = build(False)
    assert np.array_equal(batched[0], general[0])
    assert batched[1:] == general[1:]
    assert batched[0].any() and "ssrc_changes=0" not in batched[1]
    assert "packets_duplicate=0" not in batched[1] and "packets_lost=0" not in batched[1]


@pytest.mark.parametrize("build", ["compiled", "interpreted"])
@pytest.mark.parametrize("seed", range(4))
def test_feed_segment_takes_in_what_feed_many_takes(seed: int, build: str) -> None:
    """The live step reads segment bytes in place (feed_segment): on the same records,
    cut into reads at random places (records split across reads, a torn tail never
    completed), it gives the samples, counters and digits feed_many gives on the same
    records, and reports each read's stopping point."""
    from services.capture import timeline as compiled
    from services.capture.segments import RECORD_HEADER

    tl = compiled if build == "compiled" else native.load_source("services.capture.timeline")
    rng = random.Random(seed)
    records = _messy_stream(rng)
    for i in rng.sample(range(len(records) - 1), 30):  # a few out of arrival order
        records[i], records[i + 1] = records[i + 1], records[i]
    records[5:5] = [(records[5][0], b""), (records[5][0], b"\x80" * 12),
                    (records[5][0], rtp(72, 1, 2, 3, b"\0" * 20)[:1] + b"\xc8" + b"\0" * 30)]
    segment = b"".join(RECORD_HEADER.pack(a, len(d)) + d for a, d in records)
    torn = RECORD_HEADER.pack(records[-1][0] + 20, 172) + b"\x80" * 100
    rate = rng.choice([8000, 16000])

    expected = tl.StreamTimeline(CODECS, rate)
    expected.feed_many(_split_segment(segment + torn))
    in_place = tl.StreamTimeline(CODECS, rate)
    data = segment + torn
    offset, last, until = 0, -1.0, 0.0
    while True:
        chunk = data[offset:offset + rng.choice([rng.randrange(1, 4000), 64 * 1024])]
        before = running = last
        pos, last = in_place.feed_segment(chunk, until, last)
        taken = [a for a, _ in _split_segment(chunk[:pos])]
        for arrival in taken[:-1]:  # only the last record taken may be past `until`
            running = max(running, arrival)
            assert running <= until or running == before
        assert last == max([before, *taken])
        offset += pos
        until += rng.choice([0, 20, 100, 500])
        if pos == 0 and offset + len(chunk) >= len(data) and until > last:
            break
    assert offset == len(segment)  # the torn record is left where it is
    for timeline in (expected, in_place):
        timeline.advance(None)
    a, b = expected.finish(records[-1][0] + 500), in_place.finish(records[-1][0] + 500)
    assert np.array_equal(a.samples, b.samples) and a.samples.any()
    assert str(a.stats) == str(b.stats) and str(a.dtmf) == str(b.dtmf)
    assert a.stats.packets_invalid >= 3 and a.stats.packets_received == len(records)



def _split_segment(data: bytes) -> list[tuple[int, bytes]]:
    """The complete records of segment bytes, parsed on their own (the test's oracle
    of segments.py's layout: a little-endian u32 arrival and u16 length, the datagram)."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos + 6 <= len(data):
        arrival, length = struct.unpack_from("<IH", data, pos)
        if pos + 6 + length > len(data):
            break
        out.append((arrival, data[pos + 6:pos + 6 + length]))
        pos += 6 + length
    return out
