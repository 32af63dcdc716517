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


class HeaderPages:
    """The pages an Ogg stream begins with, up to its first audio: what a decoder that joins later needs first.

    Header pages end no audio packet: their granule position is 0 (or -1 when no packet ends on them).
    """

    def __init__(self, limit: int = 256 * 1024) -> None:
        self.data = bytearray()
        self.done = False
        self._pending = bytearray()
        self._limit = limit

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        self._pending += data
        while len(self._pending) >= _HEADER.size:
            capture, _, _, granule, _, _, _, count = _HEADER.unpack_from(self._pending)
            end = _HEADER.size + count
            if capture != b"OggS" or granule not in (0, -1) or len(self.data) > self._limit:
                self.done = True  # the first audio page (or not Ogg at all): the header is what came before
                self._pending.clear()
                return
            if len(self._pending) < end or len(self._pending) < end + sum(self._pending[_HEADER.size:end]):
                return  # the rest of the page is still to come
            end += sum(self._pending[_HEADER.size:end])
            self.data += self._pending[:end]
            del self._pending[:end]
