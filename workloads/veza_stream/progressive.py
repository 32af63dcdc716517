"""Progressive HTTP: `GET /stream/{channel}/{rendition}`, Icecast-style, with optional ICY metadata."""

from __future__ import annotations

import contextlib

from aiohttp import web
from aiohttp.http_writer import StreamWriter

from veza_core.web import HttpError

from .access import ACCESS, AccessDenied
from .channel import CHANNEL
from .icy import IcyState
from .listeners import LISTENERS
from .metrics import LISTENERS_REJECTED
from .renditions import Listener, RenditionFeed


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
    return await serve(request, feed, listeners.metaint)


async def serve(request: web.Request, feed: RenditionFeed, metaint: int) -> web.StreamResponse:
    icy = IcyState(metaint) if request.headers.get("Icy-MetaData", "").strip() == "1" else None
    response = web.StreamResponse(headers={
        "Content-Type": feed.content_type, "Cache-Control": "no-cache, no-store", "Connection": "close",
        "icy-name": feed.channel, "X-Content-Type-Options": "nosniff"})
    if icy:
        response.headers["icy-metaint"] = str(metaint)
    response.force_close()
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    transport = request.transport
    if transport is None:
        return response
    while not feed.burst():  # nothing encoded yet (a fresh worker): wait for the first batch
        await feed.chunks_ready.wait()
    # The headers go out alone; the burst and everything after it are written straight to the transport by the
    # feed, framed the same way aiohttp would (chunked for HTTP/1.1, raw for HTTP/1.0), from shared buffers.
    writer = request.writer
    if isinstance(writer, StreamWriter):
        writer.send_headers()
    else:  # pragma: no cover - aiohttp always gives a StreamWriter
        await response.write(b"")
    listener = Listener(transport, icy, chunked=response.headers.get("Transfer-Encoding", "").lower() == "chunked")
    feed.add(listener)
    try:
        await listener.closed
    finally:
        feed.remove(listener)
    with contextlib.suppress(Exception):
        transport.close()
    return response

