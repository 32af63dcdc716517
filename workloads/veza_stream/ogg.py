"""Packets out of Ogg pages (RFC 3533), for repackaging an Ogg Opus stream as fMP4 HLS segments.

Only what a stream written by our own muxer needs: pages in order, one logical stream,
packets that may continue across pages (a lacing value of 255 means "more follows").
"""

from __future__ import annotations

import struct

_HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, sequence, crc, segments


class OggError(ValueError):
    pass


class PacketReader:
    """Feed whole pages (any number per call); get the packets completed by them."""

    def __init__(self) -> None:
        self._partial = bytearray()  # a packet continued on the next page

    def feed(self, data: bytes) -> list[bytes]:
        packets: list[bytes] = []
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            if len(view) - pos < _HEADER.size:
                raise OggError("truncated page header")
            capture, _, flags, _, _, _, _, count = _HEADER.unpack_from(view, pos)
            if capture != b"OggS":
                raise OggError("not an Ogg page")
            lacing = view[pos + _HEADER.size:pos + _HEADER.size + count]
            pos += _HEADER.size + count
            if not flags & 1:
                self._partial.clear()  # a page that continues nothing: drop what an earlier loss left behind
            for value in lacing:
                self._partial += view[pos:pos + value]
                pos += value
                if value < 255:
                    packets.append(bytes(self._partial))
                    self._partial.clear()
            if pos > len(view):
                raise OggError("truncated page body")
        return packets
