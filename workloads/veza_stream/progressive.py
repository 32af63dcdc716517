"""Progressive HTTP: `GET /stream/{channel}/{rendition}`, Icecast-style, with optional ICY metadata.

The response says the stream time of the first audio it sends (`X-Veza-Stream-Time`, Unix seconds): a player's
stream position is that plus the seconds it has played (docs/streaming.md, "Stream position")."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from aiohttp.http_writer import StreamWriter

from veza_core.web import HttpError

from .access import ACCESS, AccessDenied
from .channel import CHANNEL
from .icy import IcyState
from .listeners import LISTENERS
from .metrics import LISTENERS_REJECTED
from .renditions import Listener, RenditionFeed

STREAM_TIME = "X-Veza-Stream-Time"


async def listen(request: web.Request) -> web.StreamResponse:
    channel, listeners = request.app[CHANNEL], request.app[LISTENERS]
    if request.match_info["channel"] != channel.name:
        raise HttpError(404, "channel_not_found", "no such channel on this worker")
    if not channel.spec.delivery.progressive:
        raise HttpError(404, "progressive_disabled", "progressive HTTP is disabled for this channel")
    feed = channel.feeds.get(request.match_info["rendition"])
    if feed is None:
        raise HttpError(404, "rendition_not_found", f"renditions: {', '.join(channel.feeds)}")
    try:
        request.app[ACCESS].listener(request)
    except AccessDenied as exc:
        LISTENERS_REJECTED.labels(channel.name, exc.code).inc()
        raise
    listeners.admit()
    return await serve(request, feed, listeners.metaint, channel.stream_time)


class ListenerResponse(web.StreamResponse):
    """A progressive response: once its listener is handed over to the feed, aiohttp must not end it (no chunked
    terminator, no close) when the handler returns."""

    handed_over = False

    async def write_eof(self, data: bytes = b"") -> None:
        if not self.handed_over:
            await super().write_eof(data)


async def serve(request: web.Request, feed: RenditionFeed, metaint: int,
                stream_time: Callable[[int], float | None] | None = None) -> web.StreamResponse:
    icy = IcyState(metaint) if request.headers.get("Icy-MetaData", "").strip() == "1" else None
    response = ListenerResponse(headers={
        "Content-Type": feed.content_type, "Cache-Control": "no-cache, no-store", "Connection": "close",
        "icy-name": feed.channel, "X-Content-Type-Options": "nosniff"})
    if icy:
        response.headers["icy-metaint"] = str(metaint)
    response.force_close()
    while request.method != "HEAD" and not feed.burst():  # nothing encoded yet (a fresh worker): wait for it
        await feed.chunks_ready.wait()
    # The burst starts with the oldest recent chunk. Nothing below waits on the feed before it is sent (preparing
    # writes the headers into a buffer), so no flush can move that start in between.
    first = stream_time(feed.recent[0].pts) if stream_time is not None and feed.recent else None
    if first is not None:
        response.headers[STREAM_TIME] = f"{first:.3f}"
    await response.prepare(request)
    transport, handler = request.transport, request.protocol
    if request.method == "HEAD" or transport is None:
        return response
    # The headers go out alone; the burst and everything after it are written straight to the transport by the
    # feed, framed the same way aiohttp would (chunked for HTTP/1.1, raw for HTTP/1.0), from shared buffers.
    writer = request.writer
    if isinstance(writer, StreamWriter):
        writer.send_headers()
    else:  # pragma: no cover - aiohttp always gives a StreamWriter
        await response.write(b"")
    framed = response.headers.get("Transfer-Encoding", "").lower() == "chunked"
    listener = Listener(feed, transport, icy, chunked=framed)
    if feed.add(listener):
        # The connection is the feed's now. aiohttp's handler lets go of it without closing it (no transport, then
        # "connection lost", which also takes it off the server's list, so shutdown does not wait for it) and this
        # handler returns: a listener keeps no task, request or response while it listens.
        response.handed_over = True
        handler.transport = None
        handler.connection_lost(None)
    return response
