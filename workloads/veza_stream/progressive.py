"""Progressive HTTP: `GET /stream/{channel}/{rendition}`, Icecast-style, with optional ICY metadata."""

from __future__ import annotations

import contextlib

from aiohttp import web

from veza_core.web import json_error

from .access import AccessDenied, check_listener
from .icy import IcyState
from .metrics import LISTENERS_REJECTED
from .renditions import Listener, RenditionFeed, chunked
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
    if limit is not None and channel.listener_count() >= limit:
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
    burst, end = feed.burst()
    while not burst:  # nothing encoded yet (a fresh worker): wait for the first batch
        await feed.chunks_ready.wait()
        burst, end = feed.burst()
    listener = Listener(transport, icy, chunked=response.headers.get("Transfer-Encoding", "").lower() == "chunked")
    # The first write goes through aiohttp, which sends the headers with it; every later
    # write goes straight to the transport from RenditionFeed.flush, framed the same way.
    await response.write(icy.interleave(burst, feed.title) if icy else burst)
    if missed := feed.since(end):  # flushed while the burst was on its way: this listener needs it too
        missed = icy.interleave(missed, feed.title) if icy else missed
        transport.write(chunked(missed) if listener.chunked else missed)
    feed.add(listener)
    try:
        await listener.closed
    finally:
        feed.remove(listener)
    with contextlib.suppress(Exception):
        transport.close()
    return response

