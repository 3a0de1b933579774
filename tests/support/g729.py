"""G.729 test audio: encode PCM with Debian's bcg729 (``libbcg729-0``) through ctypes.

PyAV (FFmpeg) decodes G.729 but has no encoder, so tests that send G.729 RTP use
the reference-quality encoder of Belledonne's bcg729. Its 1.1 API::

    bcg729EncoderChannelContextStruct *initBcg729EncoderChannel(uint8_t enableVAD);
    void bcg729Encoder(ctx, const int16_t inputFrame[80], uint8_t bitStream[],
                       uint8_t *bitStreamLength);
    void closeBcg729EncoderChannel(ctx);

Each call takes one 10 ms frame (80 samples at 8 kHz) and writes 10 bytes (or 2 for
an Annex B SID frame, 0 for an untransmitted frame when VAD is on). Without VAD
every frame is 10 bytes: 20 bytes per 20 ms RTP packet (``annexb=no``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache

import numpy as np
import numpy.typing as npt

FRAME_SAMPLES = 80
FRAME_BYTES = 10
LIBRARY = "libbcg729.so.0"


class G729Unavailable(RuntimeError):
    """libbcg729 is not installed (scripts/test installs Debian's libbcg729-0)."""


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("bcg729") or LIBRARY
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise G729Unavailable(f"{LIBRARY} not found: install the libbcg729-0 package") from exc
    lib.initBcg729EncoderChannel.argtypes = [ctypes.c_uint8]
    lib.initBcg729EncoderChannel.restype = ctypes.c_void_p
    lib.bcg729Encoder.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_int16),
        ctypes.POINTER(ctypes.c_uint8),
        ctypes.POINTER(ctypes.c_uint8),
    ]
    lib.bcg729Encoder.restype = None
    lib.closeBcg729EncoderChannel.argtypes = [ctypes.c_void_p]
    lib.closeBcg729EncoderChannel.restype = None
    return lib


def available() -> bool:
    try:
        _library()
    except G729Unavailable:
        return False
    return True


def encode(samples: npt.ArrayLike, *, vad: bool = False) -> list[bytes]:
    """8 kHz int16 PCM -> one G.729 frame (10 bytes, SID 2, or empty) per 10 ms.

    A trailing partial frame is padded with silence.
    """
    lib = _library()
    pcm = np.asarray(samples, dtype=np.int16)
    pad = (-pcm.size) % FRAME_SAMPLES
    if pad:
        pcm = np.concatenate([pcm, np.zeros(pad, dtype=np.int16)])
    context = lib.initBcg729EncoderChannel(1 if vad else 0)
    if not context:
        raise G729Unavailable("initBcg729EncoderChannel failed")
    frames: list[bytes] = []
    out = (ctypes.c_uint8 * FRAME_BYTES)()
    length = ctypes.c_uint8(0)
    try:
        for start in range(0, pcm.size, FRAME_SAMPLES):
            frame = np.ascontiguousarray(pcm[start : start + FRAME_SAMPLES])
            lib.bcg729Encoder(
                context,
                frame.ctypes.data_as(ctypes.POINTER(ctypes.c_int16)),
                out,
                ctypes.byref(length),
            )
            frames.append(bytes(out[: length.value]))
    finally:
        lib.closeBcg729EncoderChannel(context)
    return frames


def g729_payload(samples: npt.ArrayLike) -> bytes:
    """Continuous G.729 (no VAD): 10 bytes per 10 ms, 20 bytes per 20 ms packet."""
    return b"".join(encode(samples, vad=False))
