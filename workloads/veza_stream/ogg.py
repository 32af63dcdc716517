"""Packets out of Ogg pages (RFC 3533), for repackaging an Ogg Opus stream as fMP4 HLS segments.

Only what a stream written by our own muxer needs: pages in order, one logical stream,
packets that may continue across pages (a lacing value of 255 means "more follows").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, sequence, crc, segments


class OggError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Page:
    flags: int
    granule: int
    lacing: bytes  # the sizes of the page's segments
    body: int  # where its body starts in the buffer it was read from
    end: int  # and where the page ends


def page_at(buffer: bytes | bytearray | memoryview, pos: int = 0) -> Page | None:
    """The page starting at `pos`, None when the buffer ends inside it; OggError when no page starts there."""
    if len(buffer) - pos < _HEADER.size:
        return None
    capture, _, flags, granule, _, _, _, count = _HEADER.unpack_from(buffer, pos)
    if capture != b"OggS":
        raise OggError("not an Ogg page")
    body = pos + _HEADER.size + count
    if len(buffer) < body:
        return None
    lacing = bytes(buffer[pos + _HEADER.size:body])
    end = body + sum(lacing)
    return Page(flags, granule, lacing, body, end) if len(buffer) >= end else None


class PacketReader:
    """Feed whole pages (any number per call); get the packets completed by them."""

    def __init__(self) -> None:
        self._partial = bytearray()  # a packet continued on the next page

    def feed(self, data: bytes) -> list[bytes]:
        packets: list[bytes] = []
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            page = page_at(view, pos)
            if page is None:
                raise OggError("truncated page")
            if not page.flags & 1:
                self._partial.clear()  # a page that continues nothing: drop what an earlier loss left behind
            pos = page.body
            for value in page.lacing:
                self._partial += view[pos:pos + value]
                pos += value
                if value < 255:
                    packets.append(bytes(self._partial))
                    self._partial.clear()
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
        while not self.done:
            try:
                page = page_at(self._pending)
            except OggError:
                page = None
                self.done = True  # not Ogg at all: nothing to keep
            if page is None:
                break  # or the rest of the page is still to come
            if page.granule not in (0, -1) or len(self.data) > self._limit:
                self.done = True  # the first audio page: the header is what came before
                break
            self.data += self._pending[:page.end]
            del self._pending[:page.end]
        if self.done:
            self._pending.clear()
