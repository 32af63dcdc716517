"""Live ingest: an Icecast-style source client pushes audio with `PUT /stream/{channel}/source` (or the legacy
`SOURCE` method of Icecast < 2.4 on the same path).

The body is streamed into the live source's decoder as it arrives; the request lasts
as long as the broadcast. Authentication: HTTP Basic with the channel's source
password (what Icecast source clients send) or a broadcaster JWT.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import StreamReader, web
from aiohttp.typedefs import Handler

from veza_core.web import HttpError, divert_body, json_response, unframed

from .access import ACCESS
from .channel import CHANNEL
from .forwarding import FORWARDED, LeaderLost, SourceStream, headers_for_leader, to_leader
from .leadership import LEADERSHIP
from .metrics import INGEST_REJECTED

log = logging.getLogger(__name__)

INGEST_FORMATS = {"audio/mpeg": "mp3", "audio/mp3": "mp3", "audio/ogg": "ogg", "application/ogg": "ogg"}
# A source must decode to audio within this many bytes, or it is not what it claims to be.
PROBE_LIMIT = 256 * 1024


UNFRAMED: web.RequestKey[StreamReader] = web.RequestKey("veza_unframed_body", StreamReader)


def divert(request: web.Request) -> StreamReader:
    """The connection's bytes from now on, as the request's body (see `veza_core.web.divert_body`)."""
    reader = divert_body(request)
    request[UNFRAMED] = reader
    return reader


async def expect_continue(request: web.Request) -> None:
    """`Expect: 100-continue` on the source route: what ffmpeg's icecast:// sends, with a body that has neither
    Content-Length nor chunked encoding (Icecast reads it until the connection closes). aiohttp's parser would take
    such a request as bodiless and the audio as the next request, so the connection's bytes are diverted to a
    stream of our own before the client is told to go on."""
    if request.headers.get("Expect", "").lower() != "100-continue" or request.version != aiohttp.HttpVersion11:
        raise web.HTTPExpectationFailed(text="only Expect: 100-continue is supported")
    try:
        await admit(request)
    except HttpError:
        return  # no `100 Continue`: the handler answers with the reason, and the client sends no audio
    if unframed(request) and request.protocol is not None:
        divert(request)
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0


async def audio(request: web.Request) -> StreamReader:
    """The broadcast's bytes, once every check has passed. A legacy `SOURCE` client (libshout) waits for Icecast's
    bare `HTTP/1.0 200 OK` and then sends the audio unframed until it hangs up."""
    if request.method != "SOURCE":
        body = request.get(UNFRAMED)
        return request.content if body is None else body
    reader = divert(request)
    await request.writer.write(b"HTTP/1.0 200 OK\r\n\r\n")
    request.writer.output_size = 0
    return reader


async def legacy_source(request: web.Request) -> web.StreamResponse:
    """`SOURCE /stream/{channel}/source`: the PUT handler, with Icecast's answer before the audio. Once that answer
    is out, the outcome has no place on the wire (it is logged): the connection just ends. A client that sends audio
    right behind the headers without waiting (ffmpeg's `-legacy_icecast 1`) gets a 400: aiohttp's parser reads
    those bytes as the next request before any handler runs."""
    try:
        return await source(request)
    finally:
        if UNFRAMED in request and request.transport is not None:
            request.transport.close()


@web.middleware
async def server_options(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`OPTIONS *` (RFC 9110 9.3.7), which libshout sends first in its default TLS mode to offer an upgrade
    (RFC 2817): answered without one, it goes on in plain HTTP (TLS ends at the Ingress); a 404 would fail it."""
    if request.method == "OPTIONS" and request.raw_path == "*":
        return web.Response(headers={"Allow": "GET, HEAD, PUT, SOURCE, OPTIONS"})
    return await handler(request)


async def leader_to_forward_to(request: web.Request) -> str | None:
    """The leader's URL, or None when it is unknown, this replica, or the request was already forwarded once."""
    return None if FORWARDED in request.headers else await request.app[LEADERSHIP].leader_url()


async def forward(request: web.Request, leader: str, identity: str, stream: SourceStream) -> web.Response:
    """The leader's answer to a live source received here (it authenticates the source again)."""
    headers = headers_for_leader(request.headers, identity)
    status, body, content_type = await to_leader(leader, request.path, headers, stream)
    return web.Response(status=status, body=body, content_type=content_type)


async def admit(request: web.Request) -> tuple[str, str]:
    """(broadcaster, format) of a source request that may go on air, or HttpError with the reason. Checked before
    `100 Continue` too: a client told to go on takes that as a successful login (libshout does)."""
    channel = request.app[CHANNEL]
    if request.match_info["channel"] != channel.name:
        raise HttpError(404, "channel_not_found", "no such channel on this worker")
    live = channel.live
    if live is None:
        raise HttpError(409, "not_live", "this channel has no live source")
    broadcaster = await request.app[ACCESS].broadcaster(request)
    fmt = INGEST_FORMATS.get(request.content_type)
    if fmt is None:
        raise HttpError(415, "unsupported_media_type", f"send one of: {', '.join(sorted(INGEST_FORMATS))}")
    if live.busy():  # known here only on the leader; a follower learns it from the leader's answer
        raise HttpError(409, "source_busy", "another source is already live on this channel")
    return broadcaster, fmt


async def source(request: web.Request) -> web.StreamResponse:
    """A live broadcast, on air here or forwarded to the leader; every refusal counts in
    veza_stream_ingest_rejected_total under its code."""
    try:
        return await _broadcast(request)
    except HttpError as exc:
        INGEST_REJECTED.labels(request.app[CHANNEL].name, exc.code).inc()
        raise


async def _broadcast(request: web.Request) -> web.StreamResponse:
    channel, leadership = request.app[CHANNEL], request.app[LEADERSHIP]
    name = channel.name
    broadcaster, fmt = await admit(request)
    live = channel.live
    assert live is not None  # admitted
    stream: SourceStream | None = None
    loop = asyncio.get_running_loop()
    deadline = loop.time()  # how long to look for a leader: at once at first, a while after losing one
    lost: str | None = None  # the leader lost, named by its lock until the lock expires
    while not channel.encoding:
        leader = await leader_to_forward_to(request)
        if leader is not None and leader != lost:
            stream = stream or SourceStream(await audio(request), fmt)
            try:
                return await forward(request, leader, leadership.identity, stream)
            except LeaderLost as exc:
                log.warning("leader lost during a forwarded source; waiting for the next",
                            extra={"channel": name, "leader": leader, "error": str(exc)})
                lost, deadline = leader, loop.time() + 3 * leadership.ttl
        if loop.time() >= deadline:
            raise HttpError(503, "not_leader", "this replica is not encoding the channel; retry")
        await asyncio.sleep(0.2)
    try:
        session = live.open(fmt, title=request.headers.get("Ice-Name") or broadcaster)
    except RuntimeError:
        raise HttpError(409, "source_busy", "another source is already live on this channel") from None
    log.info("live source connected", extra={"channel": name, "broadcaster": broadcaster, "format": fmt})
    stream = stream or SourceStream(await audio(request), fmt)
    try:
        async for data in stream.chunks():
            while not session.feed(data):  # noqa: ASYNC110 (the queue is filled by a thread, not the loop)
                await asyncio.sleep(0.02)  # the decoder is behind: hold back the client (TCP backpressure)
            if session.error and not session.started.is_set():
                break
            if stream.received > PROBE_LIMIT and not session.started.is_set():
                await asyncio.sleep(0.2)
                if not session.started.is_set():
                    session.error = session.error or "no audio found"
                    break
    finally:
        session.end()
    await asyncio.to_thread(session.finished.wait, 5)
    log.info("live source disconnected", extra={"channel": name, "bytes": stream.received, "error": session.error})
    if not session.started.is_set() and stream.received == 0:
        # What an Icecast source's unframed PUT becomes behind an HTTP proxy (Traefik, nginx, Envoy):
        # without Content-Length or chunked framing the proxy forwards it without a body.
        raise HttpError(400, "empty_source", "no audio arrived: through an HTTP proxy, send the audio with chunked "
                                             "transfer encoding (docs/streaming.md, 'Behind the front door')")
    if not session.started.is_set():
        raise HttpError(400, "undecodable_source", f"the body is not {fmt} audio: {session.error or 'no audio'}")
    return json_response({"status": "ended", "bytes": stream.received,
                          "seconds": round(session.decoded_samples / 48000, 3)})


ICECAST_OK = ('<?xml version="1.0"?>\n<iceresponse><message>Metadata update successful</message>'
              "<return>1</return></iceresponse>\n")
MAX_TITLE = 256


async def metadata(request: web.Request) -> web.Response:
    """Icecast's title update for the live source: `GET /admin/metadata?mount=/stream/{channel}/source&mode=updinfo
    &song=...`, what libshout (ezstream, ices) and butt send to the host they stream to, or the same under
    `/stream/{channel}/admin/metadata`, which the Ingress routes to the channel. Same auth as the source; a follower
    passes it on to the leader, which holds the live source."""
    channel = request.app[CHANNEL]
    name = request.match_info.get("channel") or request.query.get("mount", "").removeprefix("/stream/").split("/")[0]
    if name != channel.name:
        raise HttpError(404, "channel_not_found", "no such mount on this worker")
    if request.query.get("mode") != "updinfo":
        raise HttpError(400, "unsupported_mode", "only mode=updinfo is supported")
    song = request.query.get("song") or " - ".join(v for k in ("artist", "title") if (v := request.query.get(k)))
    if not song or len(song) > MAX_TITLE:
        raise HttpError(400, "bad_title", f"song (or artist/title) is required, at most {MAX_TITLE} characters")
    await request.app[ACCESS].broadcaster(request)
    live = channel.live
    if live is None:
        raise HttpError(409, "not_live", "this channel has no live source")
    if not channel.encoding:
        leader = await leader_to_forward_to(request)
        if leader is None:
            raise HttpError(503, "not_leader", "this replica is not encoding the channel; retry")
        headers = headers_for_leader(request.headers, request.app[LEADERSHIP].identity, ("Authorization",))
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session, session.get(
                    f"{leader}/stream/{name}/admin/metadata", params={"mode": "updinfo", "song": song},
                    headers=headers) as resp:
                return web.Response(status=resp.status, body=await resp.read(), content_type=resp.content_type)
        except (aiohttp.ClientError, OSError) as exc:
            raise HttpError(503, "not_leader", f"the leader could not be reached: {exc}") from exc
    if not live.busy():
        raise HttpError(409, "source_not_connected", "no live source is on air to take the title")
    live.title = song
    log.info("live title updated", extra={"channel": name, "title": song})
    return web.Response(text=ICECAST_OK, content_type="text/xml")
