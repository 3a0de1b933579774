"""The capacity bench's pure parts: bencode for rtpengine's ng protocol, reading its
SDP and pcap files, and the table's arithmetic."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from bench import capacity, rtpengine


def test_bencode_known_encodings() -> None:
    assert rtpengine.bencode(42) == b"i42e"
    assert rtpengine.bencode(-3) == b"i-3e"
    assert rtpengine.bencode("spam") == b"4:spam"
    assert rtpengine.bencode(["a", 1]) == b"l1:ai1ee"
    # Keys are sorted, as bencode requires.
    assert rtpengine.bencode({"z": 1, "command": "ping"}) == b"d7:command4:ping1:zi1ee"
    with pytest.raises(TypeError):
        rtpengine.bencode(True)


def test_bdecode_round_trip_and_errors() -> None:
    message = {"command": "offer", "flags": ["trust-address"], "sdp": "v=0\r\n", "n": 7,
               "nested": {"record call": "yes"}}
    assert rtpengine.bdecode(rtpengine.bencode(message)) == {
        "command": b"offer", "flags": [b"trust-address"], "sdp": b"v=0\r\n", "n": 7,
        "nested": {"record call": b"yes"}}
    for bad in (b"i4", b"5:abc", b"d1:ai1e", b"x", b"i1ei2e"):
        with pytest.raises(ValueError):
            rtpengine.bdecode(bad)


def test_sdp_port() -> None:
    sdp = rtpengine.sdp_audio(30000, 1)
    assert "m=audio 30000 RTP/AVP 0" in sdp
    assert rtpengine.sdp_port(sdp.encode()) == 30000
    with pytest.raises(ValueError):
        rtpengine.sdp_port(b"v=0\r\n")


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcap_packets(tmp_path: Path, order: str) -> None:
    data = struct.pack(order + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for size in (200, 0, 1500):
        data += struct.pack(order + "IIII", 1, 2, size, size) + b"\0" * size
    path = tmp_path / "call-x.pcap"
    path.write_bytes(data + struct.pack(order + "IIII", 1, 2, 50, 50) + b"\0" * 10)
    assert rtpengine.pcap_packets(path) == 3  # the truncated last record is not counted
    assert rtpengine.recorded_packets(tmp_path) == (3, path.stat().st_size)


def test_percentile_and_table() -> None:
    assert capacity.percentile([], 50) != capacity.percentile([], 50)  # NaN
    values = [float(i) for i in range(1, 101)]
    assert capacity.percentile(values, 50) == 50.0
    assert capacity.percentile(values, 99) == 99.0
    line = capacity.Line(system="callrec", calls=10, rx_cm=0.1, fin_cm=0.2)
    assert line.all_cm == pytest.approx(0.3)
    assert line.calls_per_core == pytest.approx(200.0)
    table = capacity.render_table([line], "### header", ["a note"])
    assert "| 10 | callrec |" in table and "| 200 |" in table and "- a note" in table


def test_append_results_creates_the_header_once(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    capacity.append_results("### run 1\n| a |", path)  # tables end without a newline
    capacity.append_results("### run 2\n| b |", path)
    text = path.read_text()
    assert text.count("# Capacity results") == 1
    assert text.index("### run 1") < text.index("### run 2")
    assert "| a |\n\n### run 2\n| b |\n" in text  # each run's heading on a line of its own
