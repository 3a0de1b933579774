"""The machine's floor for encoding a call: libopus itself at its cheapest.

Complexity 0, 60 ms frames, 8 kbit/s, each 8 kHz channel its own mono encoder, called
straight through ctypes (callrec/opus.py) one frame at a time: no FFmpeg, no filter
graph, no Python beyond one call per frame. Both capacity.py and encode_cost.py
state capture's encoder as a ratio to this, measured in the same run.

``mode``: ``auto`` is the floor issue 11 defined (libopus' own choice at 8 kHz: SILK);
``celt`` forces the transform codec, which costs about half as much and is what capture
encodes narrowband calls with since 2026-12-02.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from callrec.opus import MultistreamEncoder, OpusMode

RATE = 8000
FRAME_MS = 60
BITRATE = 8000  # per channel


def libopus_floor(channels: Sequence[npt.NDArray[np.int16]],
                  bitrate: int = BITRATE, mode: OpusMode = "auto") -> tuple[float, int]:
    """(CPU seconds, bytes of Opus packets) to encode each 8 kHz channel on its own."""
    started = time.process_time()
    size = 0
    for samples in channels:
        # Every frame to libopus: the floor is libopus' cost, and checking frames for
        # silence (the load has none) is capture's.
        encoder = MultistreamEncoder(RATE, channels=1, bitrate=bitrate, complexity=0,
                                     frame_ms=FRAME_MS, mode=mode, skip_silence=False)
        step = encoder.frame_size
        data = np.ascontiguousarray(samples, dtype=np.int16)
        for start in range(0, data.size - step + 1, step):
            size += len(encoder.encode(data[start:start + step]))
        encoder.close()
    return time.process_time() - started, size
