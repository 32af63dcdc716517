"""Progressive HTTP: `GET /stream/{channel}/{rendition}`, Icecast-style, with optional ICY metadata."""

from __future__ import annotations

import contextlib

from aiohttp import web
from aiohttp.http_writer import StreamWriter

from veza_core.web import json_error

from .access import AccessDenied, check_listener
from .icy import IcyState
from .metrics import LISTENERS_REJECTED
from .renditions import Listener, RenditionFeed
from .state import WORKER


async def listen(request: web.Request) -> web.StreamResponse:
    worker = request.app[WORKER]
    channel = worker.channel
    if request.match_info["channel"] != channel.name:
        return json_error(404, "channel_not_found", "no such channel on this worker")
    if not channel.spec.delivery.progressive:
        return json_error(404, "progressive_disabled", "progressive HTTP is disabled for this channel")
    feed = channel.feeds.get(request.match_info["rendition"])
    if feed is None:
        return json_error(404, "rendition_not_found", f"renditions: {', '.join(channel.feeds)}")
    try:
        check_listener(request, channel.name, channel.spec.visibility == "private", worker.verifier)
    except AccessDenied as exc:
        LISTENERS_REJECTED.labels(channel.name, exc.code).inc()
        return json_error(exc.status, exc.code, exc.message)
    limit = channel.spec.limits.max_listeners
    if limit is not None and worker.listener_total() >= limit:
        LISTENERS_REJECTED.labels(channel.name, "listener_limit").inc()
        return json_error(503, "listener_limit", "the channel has reached its listener limit",
                          retry_after=5)
    return await serve(request, feed, worker.metaint)


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

