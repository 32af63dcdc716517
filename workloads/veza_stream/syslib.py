"""Codec libraries of the system, loaded with ctypes (`lame` and `opus` say why each is used)."""

from __future__ import annotations

import ctypes
import ctypes.util


def load_library(stem: str, names: tuple[str, ...]) -> ctypes.CDLL | None:
    """The first of `names` (after what the linker calls `stem`) that loads, or None."""
    candidates = list(names)
    if found := ctypes.util.find_library(stem):
        candidates.insert(0, found)
    for name in candidates:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None
