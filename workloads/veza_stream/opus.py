"""Opus encoding through the system's libopus (Debian's `libopus0`) called with ctypes.

Why not PyAV's encoder alone: libopus encodes a 20 ms frame in the same time in both builds,
but through PyAV each frame also pays for frame and packet objects and libavcodec's queueing,
about a fifth of the rendition's CPU. The Ogg container still comes from PyAV's muxer, which
writes the OpusHead (pre-skip from an encoder with the same settings) and the granule
positions. Like MP3, the caller falls back to PyAV's encoder when the library is absent.
"""

from __future__ import annotations

import ctypes
import functools

from .syslib import load_library

_APPLICATION_AUDIO = 2049
_SET_BITRATE = 4002
_GET_LOOKAHEAD = 4027
_MAX_PACKET = 4000  # bytes; RFC 6716 allows at most 1275 per frame (x3 for 60 ms)
# Frame length in 48 kHz samples of each TOC configuration (RFC 6716 3.1): SILK 10/20/40/60 ms,
# hybrid 10/20 ms, CELT 2.5/5/10/20 ms.
_FRAME_SAMPLES = [480, 960, 1920, 2880] * 3 + [480, 960] * 2 + [120, 240, 480, 960] * 4


def packet_samples(packet: bytes) -> int:
    """Duration of an Opus packet in 48 kHz samples, from its TOC byte (RFC 6716 3.1); 0 if malformed."""
    if not packet:
        return 0
    toc = packet[0]
    code = toc & 3
    frames = 1 if code == 0 else 2 if code < 3 else (packet[1] & 0x3F if len(packet) > 1 else 0)
    return _FRAME_SAMPLES[toc >> 3] * frames


@functools.cache
def load() -> ctypes.CDLL | None:
    """The system libopus, or None when it is not installed."""
    lib = load_library("opus", ("libopus.so.0", "libopus.so", "libopus.0.dylib"))
    if lib is not None:
        lib.opus_encoder_create.restype = ctypes.c_void_p
        lib.opus_encoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        lib.opus_encode_float.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p,
                                          ctypes.c_int32]
        lib.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
    return lib


class OpusEncoder:
    """Opus packets (application "audio", VBR: libopus's and FFmpeg's defaults) from interleaved float PCM."""

    def __init__(self, sample_rate: int, channels: int, bitrate_kbps: int) -> None:
        lib = load()
        if lib is None:
            raise RuntimeError("libopus is not installed")
        self._lib = lib
        error = ctypes.c_int()
        self._enc = lib.opus_encoder_create(sample_rate, channels, _APPLICATION_AUDIO, ctypes.byref(error))
        if not self._enc or error.value != 0:
            raise RuntimeError(f"opus_encoder_create failed ({error.value})")
        if lib.opus_encoder_ctl(ctypes.c_void_p(self._enc), _SET_BITRATE, ctypes.c_int32(bitrate_kbps * 1000)) != 0:
            raise RuntimeError("libopus rejected the bitrate")
        lookahead = ctypes.c_int32()
        lib.opus_encoder_ctl(ctypes.c_void_p(self._enc), _GET_LOOKAHEAD, ctypes.byref(lookahead))
        self.lookahead = lookahead.value  # samples; the stream's pre-skip
        self._out = ctypes.create_string_buffer(_MAX_PACKET)

    def encode(self, pcm: int, samples: int) -> bytes:
        """One packet from `samples` interleaved float samples per channel at address `pcm`."""
        n = self._lib.opus_encode_float(self._enc, pcm, samples, self._out, _MAX_PACKET)
        if n < 0:
            raise RuntimeError(f"opus_encode_float failed ({n})")
        return self._out.raw[:n]

    def close(self) -> None:
        if self._enc:
            self._lib.opus_encoder_destroy(self._enc)
            self._enc = None

    def __del__(self) -> None:
        self.close()
