"""MP3 encoding through the system's libmp3lame (Debian's `libmp3lame0`) called with ctypes.

Why not PyAV's encoder: the libmp3lame bundled in the PyAV wheel is built without
the hand-written assembly and runs about 3.6x slower than Debian's build (design.md,
section 5), which would make MP3 the most expensive rendition by far. The LAME API is
small and stable, ctypes releases the GIL during each call, and the caller falls back
to PyAV's encoder when the library is absent (see :func:`load`).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Iterator

from .syslib import load_library


@functools.cache
def load() -> ctypes.CDLL | None:
    """The system libmp3lame, or None when it is not installed."""
    lib = load_library("mp3lame", ("libmp3lame.so.0", "libmp3lame.so", "libmp3lame.0.dylib"))
    if lib is not None:
        lib.lame_init.restype = ctypes.c_void_p
        for fn in ("lame_set_in_samplerate", "lame_set_out_samplerate", "lame_set_num_channels", "lame_set_brate",
                   "lame_set_bWriteVbrTag", "lame_init_params", "lame_close"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p] if fn in ("lame_init_params", "lame_close") \
                else [ctypes.c_void_p, ctypes.c_int]
        lib.lame_encode_buffer_ieee_float.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                                                      ctypes.c_char_p, ctypes.c_int]
        lib.lame_encode_flush.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    return lib


class LameEncoder:
    """CBR MP3 from planar float PCM (-1..1); output is raw MP3 bytes, not frame-aligned."""

    def __init__(self, sample_rate: int, channels: int, bitrate_kbps: int) -> None:
        lib = load()
        if lib is None:
            raise RuntimeError("libmp3lame is not installed")
        self._lib = lib
        self._gfp = lib.lame_init()
        if not self._gfp:
            raise RuntimeError("lame_init failed")
        lib.lame_set_in_samplerate(self._gfp, sample_rate)
        lib.lame_set_out_samplerate(self._gfp, sample_rate)
        lib.lame_set_num_channels(self._gfp, channels)
        lib.lame_set_brate(self._gfp, bitrate_kbps)
        lib.lame_set_bWriteVbrTag(self._gfp, 0)  # a Xing header is meaningless in an endless stream
        if lib.lame_init_params(self._gfp) < 0:
            raise RuntimeError("lame_init_params rejected the settings")
        self._out = ctypes.create_string_buffer(8192)

    def encode(self, left: int, right: int, samples: int) -> bytes:
        """MP3 bytes for `samples` float samples per channel at addresses `left` and `right`."""
        need = int(1.25 * samples) + 7200
        if len(self._out) < need:
            self._out = ctypes.create_string_buffer(need)
        n = self._lib.lame_encode_buffer_ieee_float(self._gfp, left, right, samples, self._out, len(self._out))
        if n < 0:
            raise RuntimeError(f"lame_encode_buffer_ieee_float failed ({n})")
        return self._out.raw[:n]

    def flush(self) -> bytes:
        n = self._lib.lame_encode_flush(self._gfp, self._out, len(self._out))
        return self._out.raw[:max(n, 0)]

    def close(self) -> None:
        if self._gfp:
            self._lib.lame_close(self._gfp)
            self._gfp = None

    def __del__(self) -> None:
        self.close()


# -- MP3 frame headers -----------------------------------------------------------------------------------------
_BITRATES_V1_L3 = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 0)
_BITRATES_V2_L3 = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160, 0)
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def frame_length(header: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """(bytes, samples) of the Layer III frame starting with this 4-byte header, or None if it is not one."""
    if len(header) < 4 or header[0] != 0xFF or (header[1] & 0xE0) != 0xE0:
        return None
    version = (header[1] >> 3) & 3  # 3 = MPEG-1, 2 = MPEG-2, 0 = MPEG-2.5
    layer = (header[1] >> 1) & 3
    bitrate_index, rate_index = header[2] >> 4, (header[2] >> 2) & 3
    if version == 1 or layer != 1 or rate_index == 3 or bitrate_index in (0, 15):
        return None
    padding = (header[2] >> 1) & 1
    rate = _RATES[version][rate_index]
    if version == 3:
        return 144 * _BITRATES_V1_L3[bitrate_index] * 1000 // rate + padding, 1152
    return 72 * _BITRATES_V2_L3[bitrate_index] * 1000 // rate + padding, 576


class FrameSplitter:
    """Cuts a byte stream of MP3 into whole frames (for packet timing and segment boundaries)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[bytes, int]]:
        self._buf += data
        buf, pos = self._buf, 0
        while len(buf) - pos >= 4:
            info = frame_length(buf[pos:pos + 4])
            if info is None:
                pos += 1  # not a header: resynchronise byte by byte
                continue
            size, samples = info
            if len(buf) - pos < size:
                break
            yield bytes(buf[pos:pos + size]), samples
            pos += size
        del buf[:pos]
