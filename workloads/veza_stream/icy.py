"""ICY (SHOUTcast/Icecast) in-band metadata: a metadata block after every `metaint` audio bytes.

A block is one length byte (in units of 16 bytes) followed by ``StreamTitle='...';``
padded with NULs; a zero length byte means "unchanged", so a title is sent once
after it changes and then costs one byte per interval.
"""

from __future__ import annotations

DEFAULT_METAINT = 16000
MAX_TITLE_BYTES = 16 * 255 - len("StreamTitle='';")


def metadata_block(title: str) -> bytes:
    text = title.replace("'", "\u2019").encode("utf-8")[:MAX_TITLE_BYTES]
    body = b"StreamTitle='" + text + b"';"
    blocks = -(-len(body) // 16)
    return bytes([blocks]) + body.ljust(blocks * 16, b"\0")


class IcyState:
    """Per-listener position in the metadata interval and the title it was last sent."""

    __slots__ = ("metaint", "sent_title", "until_meta")

    def __init__(self, metaint: int = DEFAULT_METAINT) -> None:
        self.metaint = metaint
        self.until_meta = metaint
        self.sent_title: str | None = None

    def interleave(self, data: bytes, title: str) -> bytes:
        out = bytearray()
        view = memoryview(data)
        while len(view) >= self.until_meta:
            out += view[:self.until_meta]
            view = view[self.until_meta:]
            if title != self.sent_title:
                out += metadata_block(title)
                self.sent_title = title
            else:
                out += b"\0"
            self.until_meta = self.metaint
        out += view
        self.until_meta -= len(view)
        return bytes(out)
