"""The coding mode (SILK, hybrid, CELT) of the streams of an Opus packet, read from
their TOC bytes: what tests check a forced mode by."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av


def stream_modes(packet: bytes) -> set[str]:
    """The coding mode of each stream of a two-stream packet (RFC 6716 3.1 and B):
    the first stream self-delimited (TOC, frame count for code 3, its length), the second
    its TOC right after."""
    def mode(toc: int) -> str:
        config = toc >> 3
        return "silk" if config < 12 else "hybrid" if config < 16 else "celt"

    first = packet[0]
    code = first & 3  # 0: one frame, 1: two equal, 2: two sized, 3: a count of them
    pos = 1
    count, equal = {0: (1, True), 1: (2, True), 2: (2, False)}.get(code, (0, False))
    if code == 3:
        assert not packet[1] & 0x40, "padding is not expected here"
        count, equal = packet[1] & 0x3F, not packet[1] & 0x80
        pos += 1
    sizes = []
    for _ in range(1 if equal else count):  # one byte, or two when the first is >= 252
        size = packet[pos]
        pos += 1
        if size >= 252:
            size += 4 * packet[pos]
            pos += 1
        sizes.append(size)
    body = sizes[0] * count if equal else sum(sizes)
    return {mode(first), mode(packet[pos + body])}


def file_packets(path: Path) -> Iterator[bytes]:
    """The Opus packets of an Ogg/Opus file, as demuxed by FFmpeg."""
    with av.open(str(path)) as container:
        for packet in container.demux(audio=0):
            if packet.size:
                yield bytes(packet)
