"""Fan-out of one rendition's encoded stream to its listeners and segmenters.

A feed keeps the codec header (Ogg pages every new listener needs first) and the
last few seconds of audio for the burst on connect. Listeners are written to with
``transport.write`` straight from :meth:`RenditionFeed.publish`: no task or queue
per listener, one pre-framed buffer shared by every plain listener. The kernel
socket buffer plus the transport's write buffer is the listener's buffer; once
that holds more than ``max_buffer`` bytes the listener is too slow and is dropped,
so it never holds back anyone else.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from .icy import IcyState
from .metrics import LISTENERS, LISTENERS_DROPPED
from .transcoder import Chunk

log = logging.getLogger(__name__)


def chunked(data: bytes) -> bytes:
    """One HTTP/1.1 chunk (the response has no length: it never ends)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


class Listener:
    __slots__ = ("chunked", "closed", "icy", "transport")

    def __init__(self, transport: asyncio.Transport, icy: IcyState | None, *, chunked: bool = True) -> None:
        self.transport = transport
        self.icy = icy
        self.chunked = chunked  # HTTP/1.1 responses are chunked; HTTP/1.0 ones are raw until close
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def close(self, reason: str) -> None:
        if not self.closed.done():
            self.closed.set_result(reason)


class RenditionFeed:
    def __init__(self, channel: str, name: str, content_type: str, *, burst_seconds: float = 2.0,
                 max_buffer: int = 256 * 1024, sample_rate: int = 48000) -> None:
        self.channel = channel
        self.name = name
        self.content_type = content_type
        self.header = b""
        self.recent: deque[Chunk] = deque()
        self.burst_samples = int(burst_seconds * sample_rate)
        self.max_buffer = max_buffer
        self.listeners: set[Listener] = set()
        self.sinks: list[Callable[[list[Chunk]], None]] = []
        self.title = ""
        self.last_pts = 0
        self.chunks_ready = asyncio.Event()
        self._gauge = LISTENERS.labels(channel, name)

    # -- producer side ----------------------------------------------------------------------------
    def publish(self, chunks: list[Chunk]) -> None:
        """Deliver a batch of chunks (in order) to sinks and listeners."""
        if not chunks:
            return
        body = bytearray()
        for chunk in chunks:
            if chunk.header:
                # A new logical stream (new encoder after a leader change): new listeners need this header
                # and none of the pages before it.
                self.header = chunk.data
                self.recent.clear()
            else:
                self.recent.append(chunk)
                self.last_pts = chunk.pts + chunk.duration
            body += chunk.data
        while len(self.recent) > 1 and self.recent[-1].pts - self.recent[0].pts > self.burst_samples:
            self.recent.popleft()
        for sink in self.sinks:
            sink(chunks)
        self.chunks_ready.set()
        self.chunks_ready = asyncio.Event()
        data = bytes(body)
        framed = chunked(data)
        for listener in list(self.listeners):
            self._write(listener, data, framed)

    def set_title(self, title: str) -> None:
        self.title = title

    # -- listener side ----------------------------------------------------------------------------
    def burst(self) -> bytes:
        return self.header + b"".join(c.data for c in self.recent)

    def add(self, listener: Listener) -> None:
        self.listeners.add(listener)
        self._gauge.set(len(self.listeners))

    def remove(self, listener: Listener) -> None:
        self.listeners.discard(listener)
        self._gauge.set(len(self.listeners))

    def _write(self, listener: Listener, data: bytes, framed: bytes) -> None:
        transport = listener.transport
        if transport.is_closing():
            listener.close("disconnected")
            self.remove(listener)
            return
        if transport.get_write_buffer_size() > self.max_buffer:
            LISTENERS_DROPPED.labels(self.channel, self.name).inc()
            log.info("slow listener dropped", extra={"channel": self.channel, "rendition": self.name})
            listener.close("slow")
            self.remove(listener)
            transport.abort()
            return
        if listener.icy:
            body = listener.icy.interleave(data, self.title)
            transport.write(chunked(body) if listener.chunked else body)
        else:
            transport.write(framed if listener.chunked else data)

    def close_all(self, reason: str) -> None:
        for listener in list(self.listeners):
            listener.close(reason)
            self.remove(listener)
