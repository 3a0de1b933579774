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
    pos = 1
    if first & 3 == 3:
        pos += 1  # frame count byte (60 ms: three 20 ms frames in one CBR/VBR packet)
        vbr, padded, count = packet[1] & 0x80, packet[1] & 0x40, packet[1] & 0x3F
        assert not padded
        lengths = 1 if not vbr else count
    else:
        lengths = {0: 1, 1: 1, 2: 2}[first & 3]
    sizes = []
    for _ in range(lengths):  # each length: one byte, or two when the first is >= 252
        size = packet[pos]
        pos += 1
        if size >= 252:
            size += 4 * packet[pos]
            pos += 1
        sizes.append(size)
    if first & 3 == 3 and not (packet[1] & 0x80):
        body = sizes[0] * (packet[1] & 0x3F)
    elif first & 3 == 1:
        body = 2 * sizes[0]
    elif first & 3 == 3:
        body = sum(sizes[:-1]) + sizes[-1]
    else:
        body = sum(sizes)
    return {mode(first), mode(packet[pos + body])}


def file_packets(path: Path) -> Iterator[bytes]:
    """The Opus packets of an Ogg/Opus file, as demuxed by FFmpeg."""
    with av.open(str(path)) as container:
        for packet in container.demux(audio=0):
            if packet.size:
                yield bytes(packet)
