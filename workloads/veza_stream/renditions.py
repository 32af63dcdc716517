"""Fan-out of one rendition's encoded stream to its listeners and segmenters.

A feed keeps the codec header (Ogg pages every new listener needs first) and the
last few seconds of audio for the burst on connect. Listeners have no task or
queue of their own. Published chunks collect for ``write_interval`` seconds, then
:meth:`RenditionFeed.flush` writes one pre-built buffer to every transport: one
``transport.write`` per listener per flush and no other per-listener work (plain
HTTP/1.0 listeners and chunked HTTP/1.1 listeners each share one buffer; only ICY
listeners get their own interleaving). The write interval, not the encoder's batch,
sets how many send calls a listener costs per second, and that is the worker's main
cost per listener.

Slow and gone listeners are noticed by the transport, not by the loop: once its response
headers are out, a listener's connection belongs to the feed (:class:`Listener` becomes its
transport's protocol, and the HTTP server lets go of it), its transport has its high-water
mark at ``max_buffer``, and the listener is dropped when the transport pauses writing (its
buffer went over the mark: the listener is too slow, and is never allowed to hold back
anyone else) and forgotten when the connection is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from .icy import IcyState
from .metrics import LISTENERS, LISTENERS_DROPPED
from .settings import WRITE_INTERVAL
from .transcoder import Chunk

log = logging.getLogger(__name__)


def chunked(data: bytes) -> bytes:
    """One HTTP/1.1 chunk (the response has no length: it never ends)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


class Listener(asyncio.Protocol):
    """A listener's connection once its response headers went out: the feed writes to its transport, and this object
    (the transport's protocol from then on, in place of the HTTP server's) hears the only two events that matter.
    The whole listener is this object, its transport and socket: no task, request or response while it listens."""

    __slots__ = ("chunked", "feed", "icy", "transport")

    def __init__(self, feed: RenditionFeed, transport: asyncio.Transport, icy: IcyState | None, *,
                 chunked: bool = True) -> None:
        self.feed = feed
        self.transport = transport
        self.icy = icy
        self.chunked = chunked  # HTTP/1.1 responses are chunked; HTTP/1.0 ones are raw until close

    def pause_writing(self) -> None:
        # The transport's buffer went over max_buffer: too slow. Called from inside transport.write during a flush,
        # so the drop happens after the flush loop.
        asyncio.get_running_loop().call_soon(self.feed.drop_slow, self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.feed.remove(self)

    def data_received(self, data: bytes) -> None:
        pass  # a listener has nothing more to say (pipelined requests on a response that never ends are ignored)


class RenditionFeed:
    def __init__(self, channel: str, name: str, content_type: str, *, burst_seconds: float = 2.0,
                 max_buffer: int = 256 * 1024, sample_rate: int = 48000,
                 write_interval: float = WRITE_INTERVAL) -> None:
        self.channel = channel
        self.name = name
        LISTENERS_DROPPED.labels(channel, name)  # the alert on it reads 0, not "no data", from the start
        self.content_type = content_type
        self.header = b""
        self.recent: deque[Chunk] = deque()  # written to every listener; the burst comes from here
        self.pending: list[Chunk] = []  # published, not yet written to listeners
        self._pending_samples = 0
        self.burst_samples = int(burst_seconds * sample_rate)
        self.flush_samples = int(write_interval * sample_rate)
        self.max_buffer = max_buffer
        self.listeners: set[Listener] = set()
        self._plain: set[asyncio.Transport] = set()
        self._chunked: set[asyncio.Transport] = set()
        self._icy: set[Listener] = set()
        self._burst: bytes | None = None
        self._burst_chunked: bytes | None = None
        self.sinks: list[Callable[[list[Chunk]], None]] = []
        self.title = ""
        self.last_pts = 0
        self.chunks_ready = asyncio.Event()
        self._gauge = LISTENERS.labels(channel, name)

    # -- producer side ----------------------------------------------------------------------------
    def publish(self, chunks: list[Chunk]) -> None:
        """Take a batch of chunks (in order): sinks see it now, listeners at the next flush."""
        if not chunks:
            return
        header = False
        for chunk in chunks:
            if chunk.header:
                header = True
            else:
                self.last_pts = chunk.pts + chunk.duration
                self._pending_samples += chunk.duration
            self.pending.append(chunk)
        for sink in self.sinks:
            sink(chunks)
        # A header (a new encoder's Ogg stream) is written at once, so no listener joins between it and its pages.
        if header or self._pending_samples >= self.flush_samples or not self.recent:
            self.flush()

    def flush(self) -> None:
        """Write what was published since the last flush to every listener."""
        if not self.pending:
            return
        body = bytearray()
        for chunk in self.pending:
            if chunk.header:
                # A new logical stream: new listeners need this header and none of the pages before it.
                self.header = chunk.data
                self.recent.clear()
            else:
                self.recent.append(chunk)
            body += chunk.data
        self.pending = []
        self._pending_samples = 0
        while len(self.recent) > 1 and self.recent[-1].pts - self.recent[0].pts > self.burst_samples:
            self.recent.popleft()
        self._burst = self._burst_chunked = None
        self.chunks_ready.set()
        self.chunks_ready = asyncio.Event()
        data = bytes(body)
        for transport in self._plain:
            transport.write(data)
        if self._chunked:
            framed = chunked(data)
            for transport in self._chunked:
                transport.write(framed)
        for listener in self._icy:
            assert listener.icy is not None
            out = listener.icy.interleave(data, self.title)
            listener.transport.write(chunked(out) if listener.chunked else out)

    def set_title(self, title: str) -> None:
        self.title = title

    # -- listener side ----------------------------------------------------------------------------
    def burst(self) -> bytes:
        """What a new listener gets first: the header and the recent audio (one object shared until the next flush,
        so a thousand listeners joining at once do not each cost a copy of it)."""
        if self._burst is None:
            self._burst = self.header + b"".join(c.data for c in self.recent)
        return self._burst

    def burst_chunked(self) -> bytes:
        if self._burst_chunked is None:
            self._burst_chunked = chunked(self.burst())
        return self._burst_chunked

    def add(self, listener: Listener) -> bool:
        """Send the burst to a listener whose response headers went out and take its connection over (the caller's
        HTTP server must let go of it); False if the listener is already gone."""
        transport = listener.transport
        if transport.is_closing():
            return False
        if listener.icy is not None:
            body = listener.icy.interleave(self.burst(), self.title)
            transport.write(chunked(body) if listener.chunked else body)
        else:
            transport.write(self.burst_chunked() if listener.chunked else self.burst())
        transport.set_protocol(listener)
        transport.set_write_buffer_limits(high=self.max_buffer)
        self.listeners.add(listener)
        if listener.icy is not None:
            self._icy.add(listener)
        elif listener.chunked:
            self._chunked.add(transport)
        else:
            self._plain.add(transport)
        self._gauge.set(len(self.listeners))
        return True

    def remove(self, listener: Listener) -> None:
        if listener not in self.listeners:
            return
        self.listeners.discard(listener)
        self._icy.discard(listener)
        self._chunked.discard(listener.transport)
        self._plain.discard(listener.transport)
        self._gauge.set(len(self.listeners))

    def drop_slow(self, listener: Listener) -> None:
        if listener not in self.listeners:
            return
        LISTENERS_DROPPED.labels(self.channel, self.name).inc()
        log.info("slow listener dropped", extra={"channel": self.channel, "rendition": self.name})
        self.remove(listener)
        listener.transport.abort()

    def close_all(self, reason: str) -> None:
        """Close every listener's connection once what is buffered for it is sent (`reason`: why, e.g. shutdown)."""
        for listener in list(self.listeners):
            self.remove(listener)
            listener.transport.close()
