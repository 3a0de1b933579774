"""libopus through ctypes: independent mono Opus streams in, Opus packets out.

Why not PyAV's encoder: ``AudioCodecContext.encode`` puts an avfilter graph
(abuffer -> aformat -> abuffersink) in front of every libopus encoder to cut frames to
the codec's frame size. For a recorder that already feeds whole frames that graph is
pure overhead: about 150 KB of RSS per encoder and copies on every step, while
libopus' own state for two 8 kHz mono streams is a few tens of KB.

The library is the libopus that the PyAV wheel ships (``av.libs/libopus-*.so*``), so a
node needs nothing installed; a system libopus is the fallback. Only the few calls the
recorder needs are bound: a multistream encoder with every channel its own mono stream
(Ogg/Opus channel mapping family 255, as FFmpeg's libopus encoder configures it), the
CTLs for bitrate, complexity, VBR, look-ahead and the coding mode, encode, and destroy;
:meth:`set` takes the other integer SET CTLs (``SET_*`` below), which
bench/opus_settings.py compares.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.util
import struct
import threading
from pathlib import Path
from typing import Literal, cast

import numpy as np
import numpy.typing as npt

from .logs import get_logger

__all__ = [
    "BANDWIDTH_NARROWBAND",
    "MAX_PACKET",
    "OPUS_APPLICATION_VOIP",
    "SET_BANDWIDTH_MAX",
    "SET_CONSTRAINED_VBR",
    "SET_DTX",
    "SET_INBAND_FEC",
    "SET_LSB_DEPTH",
    "SET_PACKET_LOSS_PERC",
    "SET_SIGNAL",
    "SET_VBR",
    "SIGNAL_VOICE",
    "MultistreamEncoder",
    "OpusError",
    "OpusMode",
    "library_path",
    "opus_head",
]

log = get_logger(component="opus")

OPUS_APPLICATION_VOIP = 2048
_OPUS_OK = 0
_SET_BITRATE = 4002
_SET_VBR = 4006
_SET_COMPLEXITY = 4010
_GET_LOOKAHEAD = 4027
_RESET_STATE = 4028
_SET_FORCE_MODE = 11002
"""OPUS_SET_FORCE_MODE (opus_private.h, in every libopus since 1.0; opus_demo's -celt)."""
_MODE_CELT_ONLY = 1002

OpusMode = Literal["auto", "celt"]
"""How libopus codes: ``auto`` lets it choose per frame (SILK for speech at low
bitrates, which is what it picks at 8 kHz); ``celt`` forces the transform codec (MDCT).
At 8 kHz, complexity 0 and 60 ms frames CELT costs about half SILK's CPU for the same
speech STOI, and it keeps a steady tone whole where SILK at 6 kbit/s a channel drops
frames of it (bench/opus_settings.py)."""

# Integer SET CTLs (opus_defines.h) for :meth:`MultistreamEncoder.set`, with the values
# worth knowing: none of them is set by default, the recorder keeps libopus' defaults.
SET_BANDWIDTH_MAX = 4004
"""OPUS_SET_MAX_BANDWIDTH; ``BANDWIDTH_NARROWBAND`` (1101) caps at 4 kHz audio."""
BANDWIDTH_NARROWBAND = 1101
SET_VBR = _SET_VBR
"""OPUS_SET_VBR: 1 (the recorder's setting) or 0, CBR."""
SET_INBAND_FEC = 4012
SET_PACKET_LOSS_PERC = 4014
SET_DTX = 4016
SET_CONSTRAINED_VBR = 4020
SET_SIGNAL = 4024
"""OPUS_SET_SIGNAL; ``SIGNAL_VOICE`` (3001) biases mode decisions towards SILK."""
SIGNAL_VOICE = 3001
SET_LSB_DEPTH = 4036
"""OPUS_SET_LSB_DEPTH: the input's significant bits (8-24, default 24)."""

MAX_PACKET = 4000
"""Bytes reserved for one packet: far above 60 ms of two streams at voice bitrates."""

GRANULE_RATE = 48000
"""Ogg/Opus counts pre-skip and granule positions at 48 kHz whatever the input rate."""

_FRAME_MS = (10, 20, 40, 60, 120)
"""2.5 and 5 ms would need the CELT-only low-delay mode; 120 ms is two 60 ms SILK frames
in one packet (libopus 1.2+): fewer TOC bytes, but see bench/opus_settings.py."""


class OpusError(RuntimeError):
    """libopus returned an error code; the message is its opus_strerror."""

    def __init__(self, call: str, code: int) -> None:
        super().__init__(f"{call}: {_strerror(code)} ({code})")
        self.code = code


def library_path() -> str:
    """Path (or soname) of the libopus to load: PyAV's bundled copy, else the system's."""
    spec = importlib.util.find_spec("av")
    if spec is not None and spec.origin is not None:
        libs = Path(spec.origin).resolve().parent.parent / "av.libs"
        bundled = sorted(libs.glob("libopus-*.so*"))
        if bundled:
            return str(bundled[0])
    found = ctypes.util.find_library("opus")
    if found is None:
        raise OSError("libopus not found: neither PyAV's bundled av.libs/libopus-*.so "
                      "nor a system libopus (install PyAV's wheel or libopus0)")
    return found


@functools.cache
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(library_path())
    lib.opus_multistream_encoder_create.argtypes = [
        ctypes.c_int32, ctypes.c_int, ctypes.c_int, ctypes.c_int,
        ctypes.POINTER(ctypes.c_ubyte), ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.opus_multistream_encoder_create.restype = ctypes.c_void_p
    # The pcm pointer goes in as an integer address: no per-call pointer object.
    lib.opus_multistream_encode.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int32]
    lib.opus_multistream_encode.restype = ctypes.c_int
    lib.opus_multistream_encoder_destroy.argtypes = [ctypes.c_void_p]
    lib.opus_multistream_encoder_destroy.restype = None
    # opus_multistream_encoder_ctl is variadic: no argtypes, every argument is passed
    # as an explicit ctypes int or pointer (see _ctl).
    lib.opus_multistream_encoder_ctl.restype = ctypes.c_int
    lib.opus_strerror.argtypes = [ctypes.c_int]
    lib.opus_strerror.restype = ctypes.c_char_p
    return lib


def _strerror(code: int) -> str:
    message: bytes | None = _lib().opus_strerror(code)
    return (message or b"unknown error").decode("ascii", "replace")


def opus_head(*, channels: int, pre_skip: int, input_rate: int, streams: int,
              coupled: int, mapping: bytes) -> bytes:
    """The OpusHead packet of an Ogg/Opus stream with channel mapping family 255
    (RFC 7845 5.1): version 1, output gain 0, then the stream count, the coupled
    count and one mapping byte per channel; the same bytes FFmpeg's encoder writes."""
    if len(mapping) != channels:
        raise ValueError("one mapping byte per channel")
    return (b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, input_rate, 0, 255)
            + bytes([streams, coupled]) + mapping)


_scratch = threading.local()


def _out_buffer() -> int:
    """The address of this thread's packet buffer. One per thread, not one per encoder
    (4 KB each, one encoder per active call): a packet is copied out of it at once."""
    address: int | None = getattr(_scratch, "address", None)
    if address is None:
        _scratch.buffer = ctypes.create_string_buffer(MAX_PACKET)
        address = _scratch.address = ctypes.addressof(_scratch.buffer)
    return address


class MultistreamEncoder:
    """``channels`` independent mono Opus streams (no coupling: unrelated talkers must
    not bleed into each other), VOIP application, VBR, interleaved int16 in.

    Owns a native encoder: :meth:`close` frees it (``__del__`` too, as a safety net).
    Not thread-safe, like the libopus state it wraps. ``skip_silence=False`` hands
    every frame to libopus (see :meth:`encode_frames`).
    """

    def __init__(self, rate: int, *, channels: int = 2, bitrate: int, complexity: int,
                 frame_ms: int = 20, application: int = OPUS_APPLICATION_VOIP,
                 mode: OpusMode = "auto", skip_silence: bool = True) -> None:
        if frame_ms not in _FRAME_MS:
            raise ValueError(f"frame_ms must be one of {_FRAME_MS}, not {frame_ms}")
        lib = _lib()
        self.rate = rate
        self.channels = channels
        self.frame_size = rate * frame_ms // 1000
        """Samples per channel in one frame: what :meth:`encode` takes."""
        self._mapping = bytes(range(channels))
        error = ctypes.c_int(0)
        mapping = (ctypes.c_ubyte * channels)(*self._mapping)
        handle = lib.opus_multistream_encoder_create(rate, channels, channels, 0, mapping,
                                                     application, ctypes.byref(error))
        if error.value != _OPUS_OK or not handle:
            raise OpusError("opus_multistream_encoder_create", error.value or -7)
        self._handle: int | None = handle
        self._frame_bytes = self.frame_size * channels * 2
        self._ctl(_SET_BITRATE, bitrate)  # the total, split between the streams
        self._ctl(_SET_COMPLEXITY, complexity)
        self._ctl(_SET_VBR, 1)
        if mode == "celt" and not self._force_celt():
            mode = "auto"
        self.mode: OpusMode = mode
        """The mode it codes in: ``auto`` where a libopus refused to force CELT."""
        lookahead = ctypes.c_int(0)
        self._ctl_get(_GET_LOOKAHEAD, lookahead)
        self.lookahead = lookahead.value
        """Encoder delay in input samples: the decoder drops it as the pre-skip."""
        self._settings = (rate, channels, bitrate, complexity, frame_ms, application, mode)
        self._skips_silence = skip_silence
        self._quiet = True  # the encoder holds no sound: fresh, or it last took a silent frame
        self._skipped = False  # silent frames went out canned since libopus last encoded
        self.frames_skipped = 0
        """Silent frames sent as the canned silence packet, libopus not called."""

    @property
    def pre_skip(self) -> int:
        """The look-ahead at 48 kHz, as the OpusHead's pre-skip counts it."""
        return self.lookahead * GRANULE_RATE // self.rate

    def head(self) -> bytes:
        """This stream's OpusHead packet (the first packet of the Ogg stream)."""
        return opus_head(channels=self.channels, pre_skip=self.pre_skip,
                         input_rate=self.rate, streams=self.channels, coupled=0,
                         mapping=self._mapping)

    def encode(self, frame: npt.NDArray[np.int16]) -> bytes:
        """One packet of one frame: ``frame_size * channels`` interleaved int16 samples."""
        if frame.dtype != np.int16 or frame.nbytes != self._frame_bytes:
            raise ValueError(f"expected {self._frame_bytes // 2} int16 samples "
                             f"({self.frame_size} per channel, interleaved)")
        if self._skips_silence:
            return self.encode_frames(frame)[0]
        if self._handle is None:  # libopus alone, as bench/floor.py measures it
            raise OpusError("opus_multistream_encode", -7)  # OPUS_ALLOC_FAIL: closed
        if not frame.flags.c_contiguous:
            frame = np.ascontiguousarray(frame)
        out = _out_buffer()
        size: int = _lib().opus_multistream_encode(self._handle, frame.ctypes.data,
                                                   self.frame_size, out, MAX_PACKET)
        if size < 0:
            raise OpusError("opus_multistream_encode", size)
        return ctypes.string_at(out, size)

    def encode_frames(self, frames: npt.NDArray[np.int16]) -> list[bytes]:
        """One packet per frame of ``frames`` (whole frames, interleaved int16), in one
        call: the buffer is checked and its address taken once, not per frame.

        A frame of digital silence on every channel (no packets came: before the
        first, on hold) goes out as a canned silence packet without calling libopus,
        once the encoder holds no sound (a first silent frame is encoded, which
        flushes the look-ahead of what came before). Before the next sound the
        encoder is reset, so it starts as a fresh one does, on a decoder that has
        decoded silence: nothing is lost or shifted, and silence costs nothing.
        """
        if self._handle is None:
            raise OpusError("opus_multistream_encode", -7)  # OPUS_ALLOC_FAIL: closed
        if frames.dtype != np.int16 or frames.nbytes % self._frame_bytes:
            raise ValueError(f"expected whole frames of {self._frame_bytes // 2} int16 "
                             f"samples ({self.frame_size} per channel, interleaved)")
        frames = np.ascontiguousarray(frames)
        encode = _lib().opus_multistream_encode
        handle, frame_size, out = self._handle, self.frame_size, _out_buffer()
        base = frames.ctypes.data
        count = frames.nbytes // self._frame_bytes
        silent: list[bool] = [False] * count
        if self._skips_silence and count:
            silent = cast("list[bool]", (~frames.reshape(count, -1).any(axis=1)).tolist())
        packets: list[bytes] = []
        for index, quiet in enumerate(silent):
            if quiet and self._quiet:
                packets.append(_silence_packet(self._settings))
                self._skipped = True
                self.frames_skipped += 1
                continue
            if self._skipped:
                self._ctl(_RESET_STATE, 0)
                self._skipped = False
            size: int = encode(handle, base + index * self._frame_bytes, frame_size, out,
                               MAX_PACKET)
            if size < 0:
                raise OpusError("opus_multistream_encode", size)
            packets.append(ctypes.string_at(out, size))
            self._quiet = quiet
        return packets

    def set(self, request: int, value: int) -> None:
        """Apply one integer SET CTL (``SET_*``) to every stream; :class:`OpusError`
        (and the encoder closed) if libopus refuses it. Silence is then encoded as
        any frame: the canned packet is made with the default CTLs."""
        if self._handle is None:
            raise OpusError(f"opus_multistream_encoder_ctl({request}, {value})", -7)
        self._skips_silence = False
        self._ctl(request, value)

    def close(self) -> None:
        """Free the native encoder (idempotent)."""
        handle, self._handle = self._handle, None
        if handle is not None:
            _lib().opus_multistream_encoder_destroy(handle)

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is not None:
            self.close()

    def _force_celt(self) -> bool:
        """Force CELT (the look-ahead, so the pre-skip, stays the application's). The
        CTL is libopus-private: a build that refused it must not stop calls from being
        recorded, so that encoder goes on in ``auto``, logged once per process."""
        code: int = _lib().opus_multistream_encoder_ctl(
            ctypes.c_void_p(self._handle), ctypes.c_int(_SET_FORCE_MODE),
            ctypes.c_int32(_MODE_CELT_ONLY))
        if code == _OPUS_OK:
            return True
        if not _celt_refused:
            _celt_refused.append(code)
            log.warning("opus_celt_refused", code=code, error=_strerror(code),
                        library=library_path())
        return False

    def _ctl(self, request: int, value: int) -> None:
        code: int = _lib().opus_multistream_encoder_ctl(
            ctypes.c_void_p(self._handle), ctypes.c_int(request), ctypes.c_int32(value))
        if code != _OPUS_OK:
            self.close()
            raise OpusError(f"opus_multistream_encoder_ctl({request}, {value})", code)

    def _ctl_get(self, request: int, out: ctypes.c_int) -> None:
        code: int = _lib().opus_multistream_encoder_ctl(
            ctypes.c_void_p(self._handle), ctypes.c_int(request), ctypes.byref(out))
        if code != _OPUS_OK:
            self.close()
            raise OpusError(f"opus_multistream_encoder_ctl({request})", code)


_celt_refused: list[int] = []
"""The error code of the first refusal to force CELT in this process (logged once)."""

_Settings = tuple[int, int, int, int, int, int, OpusMode]
"""(rate, channels, bitrate, complexity, frame_ms, application, mode) of an encoder."""


@functools.lru_cache(maxsize=32)
def _silence_packet(settings: _Settings) -> bytes:
    """What libopus makes of a silent frame once it has settled (the third one), with
    these settings: the packet a frame of silence goes out as."""
    rate, channels, bitrate, complexity, frame_ms, application, mode = settings
    encoder = MultistreamEncoder(rate, channels=channels, bitrate=bitrate,
                                 complexity=complexity, frame_ms=frame_ms,
                                 application=application, mode=mode, skip_silence=False)
    try:
        silence = np.zeros(encoder.frame_size * channels, dtype=np.int16)
        return encoder.encode_frames(np.tile(silence, 3))[-1]
    finally:
        encoder.close()
