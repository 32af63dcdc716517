"""libshout (Debian's `libshout3`, what ezstream, IceS and many players' "broadcast" features use) through ctypes:
a real Icecast source client for the ingest tests (HTTP protocol; TLS "auto" by default, as libshout's own)."""

from __future__ import annotations

import ctypes
import functools

from veza_stream.syslib import load_library

SHOUT_FORMAT_MP3 = 1
SHOUT_TLS_DISABLED = 0
SHOUT_TLS_AUTO = 1  # libshout's default
SHOUTERR_NOLOGIN = -3


@functools.cache
def library() -> ctypes.CDLL | None:
    lib = load_library("shout", ("libshout.so.3",))
    if lib is None:
        return None
    lib.shout_new.restype = ctypes.c_void_p
    lib.shout_get_error.restype = ctypes.c_char_p
    lib.shout_get_error.argtypes = [ctypes.c_void_p]
    for setter in ("shout_set_host", "shout_set_password", "shout_set_mount", "shout_set_user", "shout_set_name"):
        getattr(lib, setter).argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    for setter in ("shout_set_port", "shout_set_format", "shout_set_tls"):
        getattr(lib, setter).argtypes = [ctypes.c_void_p, ctypes.c_uint]
    for call in ("shout_open", "shout_close", "shout_sync", "shout_free"):
        getattr(lib, call).argtypes = [ctypes.c_void_p]
    lib.shout_send.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.shout_metadata_new.restype = ctypes.c_void_p
    lib.shout_metadata_add.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
    lib.shout_metadata_free.argtypes = [ctypes.c_void_p]
    lib.shout_set_metadata.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.shout_init()
    return lib


def broadcast(port: int, mount: str, password: str, mp3: bytes, *, name: str = "", song: str = "",
              tls: int = SHOUT_TLS_AUTO) -> tuple[int, str]:
    """Open a source connection to 127.0.0.1:port, send `mp3` in real time (shout_sync paces it) and hang up;
    halfway through, set the title to `song` if given (libshout's metadata update, a request of its own).
    Blocking: run it in a thread. Returns the first error code of shout_open or shout_send (0: all sent) and
    libshout's last error text."""
    lib = library()
    assert lib is not None, "libshout3 is not installed (hack/bootstrap.sh installs it)"
    shout = lib.shout_new()
    try:
        lib.shout_set_host(shout, b"127.0.0.1")
        lib.shout_set_port(shout, port)
        lib.shout_set_mount(shout, mount.encode())
        lib.shout_set_password(shout, password.encode())
        lib.shout_set_format(shout, SHOUT_FORMAT_MP3)
        lib.shout_set_tls(shout, tls)
        if name:
            lib.shout_set_name(shout, name.encode())
        result = lib.shout_open(shout)
        if result == 0:
            for start in range(0, len(mp3), 4096):
                result = lib.shout_send(shout, mp3[start:start + 4096], len(mp3[start:start + 4096]))
                if result == 0 and song and start < len(mp3) // 2 <= start + 4096:
                    result = set_title(lib, shout, song)
                if result != 0:
                    break
                lib.shout_sync(shout)
            lib.shout_close(shout)
        return result, lib.shout_get_error(shout).decode()
    finally:
        lib.shout_free(shout)


def set_title(lib: ctypes.CDLL, shout: int, song: str) -> int:
    metadata = lib.shout_metadata_new()
    try:
        lib.shout_metadata_add(metadata, b"song", song.encode())
        return int(lib.shout_set_metadata(shout, metadata))
    finally:
        lib.shout_metadata_free(metadata)
