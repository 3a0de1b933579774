"""Unit tests for the live encoding (services/capture/live.py): the recording grows as
the call goes on, every prefix that ends on an Ogg page is playable, a restart continues
the same file, and finalize gives what a whole-call build gives."""

from __future__ import annotations

import gc
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from callrec import buspolicy
from callrec.audio import (
    decode_file,
    dominant_frequency,
    encode_opus_stereo,
    scan_ogg_pages,
    sound_seconds,
    tone,
)
from callrec.waveform import decode_peaks
from contracts import subjects
from contracts.v1.rpc import LiveProgress, LiveProgressBatch
from services.capture import live as live_module
from services.capture.finalize import finalize_recording, stream_specs
from services.capture.live import LIVE_FILE, LiveEncoder, Progress
from services.capture.manifest import RecordingManifest
from services.capture.segments import segment_path
from services.capture.timeline import StreamTimeline, build_channel
from tests.support.callgen import FAR_HZ, NEAR_HZ, make_recording, packets, write_segment

RATE = 16000


def _empty_recording(directory: Path, recording_id: str = "r1") -> RecordingManifest:
    """A manifest for two PCMU streams (near 0, far 1) and no packets yet."""
    make_recording(directory, 0.02, recording_id=recording_id, ended=False)
    for path in directory.glob("*.seg"):
        path.unlink()
    return RecordingManifest.load(directory)


def _play(directory: Path, encoder: LiveEncoder, streams: dict[str, list[tuple[int, bytes]]],
          until_ms: int, *, start_ms: int = 0, segment: int = 0,
          snapshots: list[tuple[Progress, bytes]] | None = None) -> LiveEncoder:
    """Capture's life cycle in fast forward: every 0.5 s the receive path appends what
    arrived, then the live encoder takes a step."""
    specs = stream_specs(RecordingManifest.load(directory))
    now = start_ms
    while now < until_ms:
        now += 500
        since = now - 500 if now - 500 > 0 else -1
        for stream_id, records in streams.items():
            new = [r for r in records if since < r[0] <= now]
            write_segment(segment_path(directory, stream_id, segment), new)
        progress = encoder.step(specs, now)
        if progress is not None and snapshots is not None:
            snapshots.append((progress, (directory / LIVE_FILE).read_bytes()))
    return encoder


def _two_tones(seconds: float, jitter_ms: int = 10) -> dict[str, list[tuple[int, bytes]]]:
    return {
        "near": packets(NEAR_HZ, seconds, ssrc=0x1111, jitter_ms=jitter_ms, seed=1),
        "far": packets(FAR_HZ, seconds, ssrc=0x2222, jitter_ms=jitter_ms, seed=2),
    }


def _decode(data: bytes, tmp_path: Path, name: str = "prefix.opus") -> np.ndarray:
    path = tmp_path / name
    path.write_bytes(data)
    audio, rate = decode_file(path, rate=RATE)
    assert rate == RATE
    return audio


def test_prefixes_on_page_boundaries_play_with_the_right_tones(tmp_path: Path) -> None:
    directory = tmp_path / "rec"
    _empty_recording(directory)
    snapshots: list[tuple[Progress, bytes]] = []
    _play(directory, LiveEncoder(directory, "r1"), _two_tones(12.0), 12_000,
          snapshots=snapshots)
    assert len(snapshots) >= 20  # a step (and at least one page) every flush
    for progress, data in snapshots[4::5]:
        assert len(data) == progress.bytes  # the file ends on the page it announced
        assert list(scan_ogg_pages_bytes(data, tmp_path))[-1] == progress.bytes
        audio = _decode(data, tmp_path)
        assert abs(audio.shape[1] / RATE - progress.duration_ms / 1000) <= 0.1
        assert abs(dominant_frequency(audio[0], RATE) - NEAR_HZ) < 10
        assert abs(dominant_frequency(audio[1], RATE) - FAR_HZ) < 10
    # The live file lags the newest packet by the reorder delay plus a flush, not more.
    last, _ = snapshots[-1]
    assert 12_000 - 1_000 <= last.duration_ms <= 12_000


def scan_ogg_pages_bytes(data: bytes, tmp_path: Path) -> list[int]:
    path = tmp_path / "scan.opus"
    path.write_bytes(data)
    return [page.end for page in scan_ogg_pages(path)]


def test_every_page_boundary_prefix_decodes(tmp_path: Path) -> None:
    directory = tmp_path / "rec"
    _empty_recording(directory)
    _play(directory, LiveEncoder(directory, "r1"), _two_tones(4.0), 4_000)
    data = (directory / LIVE_FILE).read_bytes()
    ends = scan_ogg_pages_bytes(data, tmp_path)
    assert ends[-1] == len(data)
    for end in ends[2:]:
        audio = _decode(data[:end], tmp_path)
        assert audio.shape[0] == 2 and audio.shape[1] > 0


def test_finalize_equals_whole_call_build(tmp_path: Path) -> None:
    """Same tones, same length, same statistics as the whole-call build."""
    directory = tmp_path / "rec"
    manifest = _empty_recording(directory)
    streams = _two_tones(10.0, jitter_ms=30)
    encoder = _play(directory, LiveEncoder(directory, "r1"), streams, 9_000)
    for stream_id, records in streams.items():  # the rest, then the BYE
        write_segment(segment_path(directory, stream_id, 0), [r for r in records if r[0] > 9_000])
    result = encoder.finish(stream_specs(manifest), 10_000)
    audio = _decode((directory / LIVE_FILE).read_bytes(), tmp_path)
    assert abs(audio.shape[1] / RATE - 10.0) <= 0.1
    for channel, (stream_id, hz) in enumerate((("near", NEAR_HZ), ("far", FAR_HZ))):
        whole = build_channel(streams[stream_id], {0: "PCMU"}, 10_000)
        assert abs(dominant_frequency(audio[channel], RATE) - hz) < 5
        assert abs(sound_seconds(audio[channel], RATE) - sound_seconds(whole.samples, RATE)) <= 0.1
        summary = next(c for c in result.channels if c.stream_id == stream_id)
        stats = whole.stats
        assert (summary.packets_received, summary.packets_decoded, summary.packets_lost,
                summary.packets_duplicate, summary.codecs, summary.silent_reason) == (
            stats.packets_received, stats.packets_decoded, stats.packets_lost,
            stats.packets_duplicate, stats.codecs, stats.silent_reason)
        assert summary.channel == channel


def test_the_end_is_trimmed_on_the_end_of_stream_page_alone(tmp_path: Path) -> None:
    """RFC 7845: the padding of the last frame is trimmed by the end-of-stream page's
    granule, within that page; no page's granule goes below the page before it."""
    directory = tmp_path / "rec"
    manifest = _empty_recording(directory)
    encoder = _play(directory, LiveEncoder(directory, "r1"), _two_tones(2.0), 2_000)
    encoder.finish(stream_specs(manifest), 2_010)  # not a whole number of frames
    data = (directory / LIVE_FILE).read_bytes()
    pre_skip = int.from_bytes(data[data.index(b"OpusHead") + 10:][:2], "little")
    pages = list(scan_ogg_pages(directory / LIVE_FILE))
    granules = [page.granule for page in pages]
    assert granules == sorted(granules), granules
    assert pages[-1].flags & 4 and pages[-1].granule == pre_skip + 2_010 * 48
    assert pages[-2].granule < pages[-1].granule  # the padded frame is on the last page
    audio = _decode(data, tmp_path)
    assert abs(audio.shape[1] - 2.01 * RATE) <= 2


def test_streaming_timeline_equals_whole_call_under_jitter_and_reordering() -> None:
    """Packets jittered by up to 80 ms and reordered: placed and decoded as in one go."""
    records = packets(NEAR_HZ, 8.0, ssrc=7, jitter_ms=80, seed=5)
    whole = build_channel(records, {0: "PCMU"}, 8_000).samples
    timeline = StreamTimeline({0: "PCMU"}, RATE)
    pieces = []
    for now in range(500, 8_001, 500):
        for arrival, data in records:
            if (now - 500 if now > 500 else -1) < arrival <= now:
                timeline.feed(arrival, data)
        emit = int((now - 300) * RATE / 1000) // 320 * 320
        timeline.advance(now, reorder_ms=150, emit_sample=emit)
        pieces.append(timeline.take(emit))
    pieces.append(timeline.finish(8_000).samples)
    streamed = np.concatenate(pieces)
    assert streamed.size == whole.size
    assert timeline.packets_late == 0 and timeline.canvas.shifted_samples == 0
    # The anchor (least delayed packet so far) may be a few ms later than the whole
    # call's; shifted by that, the audio is the same.
    lag = _lag(whole, streamed)
    assert 0 <= lag <= 5 * RATE // 1000
    aligned = streamed[lag:]
    differs = np.flatnonzero(np.abs(aligned.astype(int) - whole[: aligned.size].astype(int)) > 8)
    assert differs.size <= 64, differs.size


def _lag(reference: np.ndarray, signal: np.ndarray, most: int = 320) -> int:
    """Samples by which ``signal`` is later than ``reference`` (0..most)."""
    ref = reference[RATE : 3 * RATE].astype(float)
    errors = [np.abs(signal[RATE + k : 3 * RATE + k].astype(float) - ref).mean()
              for k in range(most)]
    return int(np.argmin(errors))


def test_packet_later_than_the_reorder_window_is_dropped_not_misplaced() -> None:
    records = packets(NEAR_HZ, 3.0, ssrc=7, jitter_ms=0, seed=1)
    late = records.pop(50)  # 1.0 s of audio, arriving 0.6 s late (its run still)
    records.append((late[0] + 600, late[1]))
    records.sort(key=lambda r: r[0])
    timeline = StreamTimeline({0: "PCMU"}, RATE)
    out = []
    for now in range(500, 4_001, 500):
        for arrival, data in records:
            if (now - 500 if now > 500 else -1) < arrival <= now:
                timeline.feed(arrival, data)
        emit = int((now - 300) * RATE / 1000) // 320 * 320
        timeline.advance(now, reorder_ms=150, emit_sample=emit)
        out.append(timeline.take(emit))
    out.append(timeline.finish(3_000).samples)
    samples = np.concatenate(out)
    assert timeline.packets_late == 1
    stats = timeline.summary()
    assert stats.packets_received == 150 and stats.packets_duplicate == 0
    # The hole it leaves is 20 ms of silence at 1.0 s; everything else is in place.
    assert abs(sound_seconds(samples, RATE) - 2.98) <= 0.03


def test_hold_stops_the_file_and_the_silence_comes_with_the_next_packets(tmp_path: Path) -> None:
    directory = tmp_path / "rec"
    manifest = _empty_recording(directory)
    before = packets(NEAR_HZ, 3.0, ssrc=1, jitter_ms=5, seed=1)
    after = packets(NEAR_HZ, 3.0, ssrc=1, jitter_ms=5, seed=2, start_ms=8_000,
                    seq0=1150, ts0=50_000 + 160 * 400)
    encoder = LiveEncoder(directory, "r1")
    snapshots: list[tuple[Progress, bytes]] = []
    _play(directory, encoder, {"near": before + after, "far": []}, 7_000, snapshots=snapshots)
    # On hold: the file does not run ahead of the last packet.
    assert snapshots[-1][0].duration_ms <= 3_100
    _play(directory, encoder, {"near": before + after, "far": []}, 11_000, start_ms=7_000)
    encoder.finish(stream_specs(manifest), 11_000)
    audio = _decode((directory / LIVE_FILE).read_bytes(), tmp_path)
    assert abs(audio.shape[1] / RATE - 11.0) <= 0.1
    frames = audio[0][: audio.shape[1] // 320 * 320].reshape(-1, 320).astype(float)
    loud = np.sqrt((frames**2).mean(axis=1)) > 1000
    assert loud[5:145].all() and not loud[160:395].any() and loud[405:545].all()


def test_restart_continues_the_same_file_from_its_last_complete_page(tmp_path: Path) -> None:
    directory = tmp_path / "rec"
    manifest = _empty_recording(directory)
    streams = _two_tones(10.0)
    first = _play(directory, LiveEncoder(directory, "r1"), streams, 5_000)
    first.close()  # capture killed...
    kept = (directory / LIVE_FILE).read_bytes()
    with (directory / LIVE_FILE).open("ab") as handle:
        handle.write(b"OggS\x00\x00torn page of a crash")
    # ...restarted: the packets after the restart go to new segment files.
    second = LiveEncoder(directory, "r1")
    assert second.bytes == len(kept)
    _play(directory, second, streams, 10_000, start_ms=5_000, segment=1)
    result = second.finish(stream_specs(manifest), 10_000)
    data = (directory / LIVE_FILE).read_bytes()
    assert data.startswith(kept)  # append-only: what peers copied stays valid
    audio = _decode(data, tmp_path)
    assert abs(audio.shape[1] / RATE - 10.0) <= 0.1
    for channel, hz in ((0, NEAR_HZ), (1, FAR_HZ)):
        assert abs(dominant_frequency(audio[channel], RATE) - hz) < 5
        assert sound_seconds(audio[channel], RATE) >= 9.9
    assert [c.packets_received for c in result.channels] == [
        sum(1 for r in streams[s] if r[0] <= 10_000) for s in ("near", "far")]


def test_a_closed_file_whose_result_was_lost_is_counted_again(tmp_path: Path) -> None:
    """final.json is not synced: a machine crash can keep the end-of-stream page and
    lose the file. The result is then counted again from the segments and the audio,
    the same channels and duration, and the file is left byte for byte: the store
    may hold it already (by a link) and peers may have copied it."""
    directory = tmp_path / "rec"
    manifest = _empty_recording(directory)
    streams = _two_tones(6.0)
    specs = stream_specs(manifest)
    first = _play(directory, LiveEncoder(directory, "r1"), streams, 6_000).finish(specs, 6_000)
    closed = (directory / LIVE_FILE).read_bytes()
    (directory / live_module.FINAL_STATE).write_bytes(b"")  # renamed, its data lost
    again = LiveEncoder(directory, "r1")
    assert again.final is None and again.closed and again.bytes == len(closed)
    assert again.step(specs, 7_000) is None and again.drained
    result = again.finish(specs, 6_000)
    assert (directory / LIVE_FILE).read_bytes() == closed
    assert (result.duration_ms, result.channels, result.codecs) == (
        first.duration_ms, first.channels, first.codecs)
    assert result.peaks is not None and first.peaks is not None
    assert result.peaks.buckets == first.peaks.buckets
    # Drawn from the decoded audio (lossy): sound in the buckets where the encoder saw it.
    drawn, seen = (decode_peaks(p).astype(np.int32) for p in (result.peaks, first.peaks))
    loud_drawn, loud_seen = (d[:, :, 1] - d[:, :, 0] > 20 for d in (drawn, seen))
    assert loud_seen[:, 5:-5].all() and (loud_drawn == loud_seen).mean() >= 0.98
    assert LiveEncoder(directory, "r1").final == result  # and it is kept this time


def test_the_finish_waits_on_no_disk_sync(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker finishes its recordings one after another: a sync there waited for a
    journal commit per recording when many calls ended at once. The store syncs the
    file it takes; the result may be lost, and is counted again (test above)."""
    directory = tmp_path / "rec"
    manifest = _empty_recording(directory)
    encoder = _play(directory, LiveEncoder(directory, "r1"), _two_tones(3.0), 3_000)
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    monkeypatch.setattr(os, "fdatasync", synced.append)
    encoder.finish(stream_specs(manifest), 3_000)
    assert synced == []
    assert LiveEncoder(directory, "r1").final is not None


def test_finalize_from_segments_alone_and_idempotent(tmp_path: Path) -> None:
    """A recording whose live encoder never ran (crash before the first step)."""
    directory = make_recording(tmp_path / "rec", 6.0)
    result = finalize_recording(directory, tmp_path / "out.opus", 16000)
    audio = _decode((tmp_path / "out.opus").read_bytes(), tmp_path, "out2.opus")
    assert abs(audio.shape[1] / RATE - 6.0) <= 0.1
    assert abs(dominant_frequency(audio[0], RATE) - NEAR_HZ) < 5
    size = (directory / LIVE_FILE).stat().st_size
    again = finalize_recording(directory, None, 16000)
    assert again == result and (directory / LIVE_FILE).stat().st_size == size


def test_write_failure_keeps_the_file_on_a_page_boundary_and_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "rec"
    manifest = _empty_recording(directory)
    streams = _two_tones(6.0)
    encoder = _play(directory, LiveEncoder(directory, "r1"), streams, 2_000)
    real_write = os.write

    def full(fd: int, data: bytes | memoryview) -> int:
        real_write(fd, bytes(data)[:7])  # part of a page reaches the disk, then ENOSPC
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(live_module.os, "write", full)
    _play(directory, encoder, streams, 4_000, start_ms=2_000)
    data = (directory / LIVE_FILE).read_bytes()
    assert scan_ogg_pages_bytes(data, tmp_path)[-1] == len(data) == encoder.bytes
    monkeypatch.setattr(live_module.os, "write", real_write)
    _play(directory, encoder, streams, 6_000, start_ms=4_000)
    encoder.finish(stream_specs(manifest), 6_000)
    audio = _decode((directory / LIVE_FILE).read_bytes(), tmp_path)
    assert sound_seconds(audio[0], RATE) >= 5.9  # nothing lost while the disk was full


def test_dtmf_and_codec_change_reported(tmp_path: Path) -> None:
    directory = tmp_path / "rec"
    manifest = _empty_recording(directory)
    manifest.streams["near"].payload_codecs = {0: "PCMU", 8: "PCMA", 101: "telephone-event"}
    manifest.save(directory)
    near = packets(NEAR_HZ, 2.0, ssrc=1, jitter_ms=0, seed=1)
    near += packets(NEAR_HZ, 2.0, ssrc=1, jitter_ms=0, seed=1, start_ms=2_000, seq0=1100,
                    ts0=50_000 + 160 * 100, pt=8)
    from aiortc.rtp import RtpPacket
    for i in range(5):  # digit 5 at 1.0 s, 100 ms long, end packets repeated
        duration = 160 * (i + 1) // 2 if i < 3 else 800
        event = bytes([5, 0x80 if i >= 3 else 0, duration >> 8, duration & 0xFF])
        near.append((1_000 + 20 * i, RtpPacket(payload_type=101, sequence_number=5000 + i,
                                               timestamp=50_000 + 8 * 1000, ssrc=1,
                                               payload=event).serialize()))
    near.sort(key=lambda r: r[0])
    encoder = _play(directory, LiveEncoder(directory, "r1"), {"near": near, "far": []}, 4_000)
    result = encoder.finish(stream_specs(RecordingManifest.load(directory)), 4_000)
    summary = next(c for c in result.channels if c.stream_id == "near")
    assert summary.codecs == ["PCMA", "PCMU", "telephone-event"]
    assert [d.digit for d in summary.dtmf] == ["5"]
    assert abs(summary.dtmf[0].at_ms - 1_000) <= 30 and summary.dtmf[0].duration_ms == 100
    far = next(c for c in result.channels if c.stream_id == "far")
    assert far.silent_reason == "no_packets"


def test_ogg_pages_of_ffmpeg_scan_and_ours_decode(tmp_path: Path) -> None:
    """Our CRC agrees with FFmpeg's pages (all of its file scans as valid)."""
    path = tmp_path / "ffmpeg.opus"
    encode_opus_stereo(tone(440, 2.0, RATE), tone(1000, 2.0, RATE), RATE, path)
    ends = [page.end for page in scan_ogg_pages(path)]
    assert ends[-1] == path.stat().st_size and len(ends) >= 3
    broken = bytearray(path.read_bytes())
    broken[ends[1] + 40] ^= 0xFF  # corrupt the third page
    (tmp_path / "broken.opus").write_bytes(bytes(broken))
    assert [p.end for p in scan_ogg_pages(tmp_path / "broken.opus")] == ends[:2]


def test_live_progress_subject_and_bus_permissions() -> None:
    assert subjects.live("n1", "abc") == "callrec.v1.n1.live.abc"
    assert subjects.all_live() == "callrec.v1.*.live.>"
    capture = buspolicy.permissions("capture", "n1")
    # Capture announces rounds of steps only: one recording a message is what sync
    # still follows from nodes of the previous release, never what capture sends.
    assert not any(".live." in s for s in capture["publish"]["allow"])
    assert subjects.all_live() not in capture["subscribe"]["allow"]
    sync = buspolicy.permissions("sync", "n1")
    assert subjects.all_live() in sync["subscribe"]["allow"]
    assert not any(".live." in s for s in sync["publish"]["allow"])
    message = LiveProgress(recording_id="abc", node_id="n1", bytes=10, duration_ms=5)
    assert LiveProgress.model_validate_json(message.model_dump_json()).final is False
    # Batched: a node states its own recordings' progress, and only sync follows it.
    assert subjects.live_batch("n1") == "callrec.v1.n1.progress"
    assert subjects.all_live_batches() == "callrec.v1.*.progress"
    assert subjects.live_batch("n1") in capture["publish"]["allow"]
    assert subjects.live_batch("n2") not in capture["publish"]["allow"]
    assert subjects.all_live_batches() in sync["subscribe"]["allow"]
    for identity in buspolicy.SERVICE_IDENTITIES:
        perms = buspolicy.permissions(identity, "n1")
        assert (subjects.live_batch("n1") in perms["publish"]["allow"]) == (
            identity == "capture"), identity
        assert (subjects.all_live_batches() in perms["subscribe"]["allow"]) == (
            identity == "sync"), identity
    batch = LiveProgressBatch(node_id="n1", updates=[message, message])
    assert LiveProgressBatch.model_validate_json(batch.model_dump_json()) == batch
    with pytest.raises(ValueError):
        LiveProgressBatch(node_id="n1", updates=[])


def test_empty_recording_is_still_a_playable_file(tmp_path: Path) -> None:
    directory = make_recording(tmp_path / "rec", 0.0)
    result = finalize_recording(directory, tmp_path / "empty.opus", 16000)
    assert [c.silent_reason for c in result.channels] == ["no_packets", "no_packets"]
    audio, _ = decode_file(tmp_path / "empty.opus", rate=RATE)
    assert audio.shape[0] == 2 and audio.shape[1] <= RATE // 10


def test_segment_tail_reads_records_of_any_size_across_read_boundaries(tmp_path: Path) -> None:
    """Records straddling the first read's end, and larger than it, come out whole, in
    order, and a bounded read stops just after the first record beyond its time."""
    directory = tmp_path / "rec"
    directory.mkdir()
    sizes = [172] * 150 + [40_000, 172, 65_535] + [172] * 200 + [20_000] + [172] * 10
    records = [(i * 20, bytes([i % 251]) * size) for i, size in enumerate(sizes)]
    write_segment(segment_path(directory, "near", 0), records)
    tail = live_module.SegmentTail(directory, "near")
    first = tail.read(3_000.0)
    assert first == records[:152]  # up to 3000 ms, and the one record beyond it
    rest = tail.read(None)
    assert first + rest == records
    assert tail.read(None) == []
    tail.close()


def test_a_catch_up_step_leaves_only_the_unemitted_tail_in_memory() -> None:
    """A worker that fell behind decodes seconds of a stream in one step and emits all
    but the last few hundred ms: what the timeline keeps must be that tail, not the
    whole step's samples (a view of them kept every stream's step alive)."""
    records = packets(NEAR_HZ, 4.0, ssrc=7, jitter_ms=0, seed=3)
    timeline = StreamTimeline({0: "PCMU"}, RATE)
    timeline.feed_many(r for r in records if r[0] <= 2_000)
    timeline.advance(2_000, reorder_ms=150, emit_sample=0)
    timeline.take(0)
    tracemalloc.start()
    try:
        # The next 2 s at once, as a catch-up step reads them; all but the last 300 ms out.
        timeline.feed_many(r for r in records if 2_000 < r[0] <= 4_000)
        timeline.advance(4_000, reorder_ms=150, emit_sample=(4_000 - 300) * RATE // 1000)
        out = timeline.take((4_000 - 300) * RATE // 1000)
        assert out.size == (4_000 - 300) * RATE // 1000
        del out
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    step = 2 * RATE * 2  # the step's decoded samples, int16
    assert held < step // 2, (held, step)


@pytest.mark.parametrize("step_ms", [250, 500, 700, 2_300])
def test_a_drained_encoder_gains_nothing_from_steps_without_packets(
        tmp_path: Path, step_ms: int) -> None:
    """Capture skips the live steps of a call whose encoder said it is drained until its
    segments grow: so a drained encoder must have nothing left that time alone would
    release (audio held back by the emit delay or the reordering window). A call with
    a hold (no packets 2-5 s) stepped at several intervals."""
    directory = tmp_path / "rec"
    manifest = _empty_recording(directory)
    specs = stream_specs(manifest)
    hold = {"near": packets(NEAR_HZ, 2.0, ssrc=1, jitter_ms=10, seed=1),
            "far": packets(FAR_HZ, 2.0, ssrc=2, jitter_ms=10, seed=2)}
    resumed = {"near": packets(NEAR_HZ, 2.0, ssrc=1, jitter_ms=10, seed=3, start_ms=5_000,
                               seq0=1100, ts0=50_000 + 160 * 250),
               "far": packets(FAR_HZ, 2.0, ssrc=2, jitter_ms=10, seed=4, start_ms=5_000,
                              seq0=1100, ts0=50_000 + 160 * 250)}
    streams = {k: hold[k] + resumed[k] for k in hold}
    last_before_hold = max(r[0] for records in hold.values() for r in records)
    encoder = LiveEncoder(directory, "r1")
    now, was_drained, skippable, held_back = 0, False, 0, 0
    while now < 9_000:
        since, now = now, now + step_ms
        new = 0
        for stream_id, records in streams.items():
            arrived = [r for r in records if since < r[0] <= now]
            write_segment(segment_path(directory, stream_id, 0), arrived)
            new += len(arrived)
        before = encoder.bytes
        progress = encoder.step(specs, now)
        if was_drained and not new:
            skippable += 1  # a step capture would skip: it must add nothing
            assert progress is None and encoder.bytes == before
        if not encoder.drained and not new:
            held_back += 1  # audio waiting for time alone: capture must step it
        if encoder.drained and now < 5_000:
            # drained in the hold: everything up to its last packet is in the file
            assert encoder.progress.duration_ms >= last_before_hold - 60
        was_drained = encoder.drained
    assert skippable >= 1 and held_back + (step_ms > 300) >= 1
    encoder.finish(specs, 7_000)
    audio = _decode((directory / LIVE_FILE).read_bytes(), tmp_path)
    assert abs(audio.shape[1] / RATE - 7.0) <= 0.1
    for channel, hz in ((0, NEAR_HZ), (1, FAR_HZ)):
        assert dominant_frequency(audio[channel][: 2 * RATE], RATE) == pytest.approx(hz, abs=20)
        assert dominant_frequency(audio[channel][5 * RATE:], RATE) == pytest.approx(hz, abs=20)
    frames = audio[0][: audio.shape[1] // 320 * 320].reshape(-1, 320).astype(float)
    loud = np.sqrt((frames**2).mean(axis=1)) > 1000
    assert loud[5:95].all() and not loud[105:245].any() and loud[255:345].all()


def test_worker_steps_report_which_recordings_are_drained(tmp_path: Path) -> None:
    directory = tmp_path / "rec"
    manifest = _empty_recording(directory, recording_id="r-drain")
    specs = stream_specs(manifest)
    write_segment(segment_path(directory, "near", 0),
                  packets(NEAR_HZ, 1.0, ssrc=1, jitter_ms=0, seed=1))
    job = (directory, "r-drain", specs, 1_000.0, 16_000, live_module.NARROWBAND_MODE)
    try:
        first = live_module.worker_steps([job])[0]
        # The last 300 ms wait for the emit delay: not drained, another step is wanted.
        assert first.error is None and first.progress is not None and not first.drained
        second = live_module.worker_steps([(*job[:3], 1_400.0, *job[4:])])[0]
        assert second.drained and second.grown > 0  # the held-back audio came out
        bare = [live_module.StreamSpec(s.stream_id, s.channel, {}) for s in specs]
        no_codec = live_module.worker_steps([(directory, "r-none", bare, 1_000.0, 16_000,
                                              live_module.NARROWBAND_MODE)])[0]
        assert no_codec == (None, 0, None, False)  # packets may wait for their codec
    finally:
        live_module.worker_drop("r-drain")
