"""bench/encode_cost.py's split of the live path: libopus timed call by call."""

from __future__ import annotations

import numpy as np

from bench.encode_cost import libopus_timed
from callrec import opus
from callrec.audio import tone
from callrec.opus import MultistreamEncoder


def test_libopus_encode_calls_are_timed_and_the_library_is_restored() -> None:
    original = opus._lib
    samples = tone(440.0, 1.2, 8000)
    with libopus_timed() as timed:
        encoder = MultistreamEncoder(8000, channels=1, bitrate=8000, complexity=0,
                                     frame_ms=60, skip_silence=False)
        step = encoder.frame_size
        packets = [encoder.encode(np.ascontiguousarray(samples[i:i + step]))
                   for i in range(0, samples.size - step + 1, step)]
        encoder.close()
    assert len(packets) == 20 and all(packets)
    assert 0.0 < timed.seconds < 1.0
    assert opus._lib is original
