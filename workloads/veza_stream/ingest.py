"""Live ingest: an Icecast-style source client pushes audio with `PUT /stream/{channel}/source`.

The body is streamed into the live source's decoder as it arrives; the request lasts
as long as the broadcast. Authentication: HTTP Basic with the channel's source
password (what Icecast source clients send) or a broadcaster JWT.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import StreamReader, web

from veza_core.web import json_error

from .access import AccessDenied, check_broadcaster
from .metrics import INGEST_REJECTED
from .state import WORKER

log = logging.getLogger(__name__)

INGEST_FORMATS = {"audio/mpeg": "mp3", "audio/mp3": "mp3", "audio/ogg": "ogg", "application/ogg": "ogg"}
# A source must decode to audio within this many bytes, or it is not what it claims to be.
PROBE_LIMIT = 256 * 1024


FORWARDED = "X-Veza-Forwarded-By"
UNFRAMED: web.RequestKey[StreamReader] = web.RequestKey("veza_unframed_body", StreamReader)


class _UnframedBody:
    """Takes the connection's bytes after the headers, for a PUT without Content-Length or chunked encoding."""

    def __init__(self, reader: StreamReader) -> None:
        self.reader = reader

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.reader.feed_data(data)
        return False, b""

    def feed_eof(self) -> None:
        self.reader.feed_eof()


def unframed(request: web.BaseRequest) -> bool:
    return ("Content-Length" not in request.headers
            and "chunked" not in request.headers.get("Transfer-Encoding", "").lower())


async def expect_continue(request: web.Request) -> None:
    """`Expect: 100-continue` on the source route: what ffmpeg's icecast:// sends, with a body that has neither
    Content-Length nor chunked encoding (Icecast reads it until the connection closes). aiohttp's parser would take
    such a request as bodiless and the audio as the next request, so the connection's bytes are diverted to a
    stream of our own before the client is told to go on."""
    if request.headers.get("Expect", "").lower() != "100-continue" or request.version != aiohttp.HttpVersion11:
        raise web.HTTPExpectationFailed(text="only Expect: 100-continue is supported")
    if unframed(request) and request.protocol is not None:
        reader = StreamReader(request.protocol, 2**16, loop=asyncio.get_running_loop())
        request.protocol.set_parser(_UnframedBody(reader))  # type: ignore[arg-type]
        request[UNFRAMED] = reader
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0
# Headers of a source request that the leader needs to see too.
FORWARD_HEADERS = ("Authorization", "Content-Type", "Ice-Name", "Ice-Description", "Ice-Genre", "Ice-Url")


async def forward(request: web.Request, leader: str, identity: str, body: StreamReader) -> web.Response:
    """Stream a live source received by a follower to the leader (which authenticates it again)."""
    headers = {h: request.headers[h] for h in FORWARD_HEADERS if h in request.headers}
    headers[FORWARDED] = identity
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=3, sock_read=None)
    log.info("live source forwarded to the leader", extra={"leader": leader})
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.put(
                f"{leader}{request.path}", data=body.iter_any(), headers=headers) as resp:
            answer = await resp.read()
            return web.Response(status=resp.status, body=answer, content_type=resp.content_type)
    except (aiohttp.ClientError, OSError) as exc:
        return json_error(503, "not_leader", f"the leader could not be reached: {exc}")


async def source(request: web.Request) -> web.StreamResponse:
    worker = request.app[WORKER]
    channel = worker.channel
    name = channel.name

    def reject(status: int, code: str, message: str) -> web.Response:
        INGEST_REJECTED.labels(name, code).inc()
        return json_error(status, code, message)

    if request.match_info["channel"] != name:
        return reject(404, "channel_not_found", "no such channel on this worker")
    live = channel.live
    if live is None:
        return reject(409, "not_live", "this channel has no live source")
    try:
        broadcaster = check_broadcaster(request, name, worker.source_password, worker.verifier)
    except AccessDenied as exc:
        return reject(exc.status, exc.code, exc.message)
    fmt = INGEST_FORMATS.get(request.content_type)
    if fmt is None:
        return reject(415, "unsupported_media_type", f"send one of: {', '.join(sorted(INGEST_FORMATS))}")
    body = request.get(UNFRAMED)
    if body is None:
        body = request.content
    if not channel.encoding:
        leader = await worker.leader_url() if FORWARDED not in request.headers else None
        if leader is None:
            return reject(503, "not_leader", "this replica is not encoding the channel; retry")
        return await forward(request, leader, worker.identity, body)
    try:
        session = live.open(fmt, title=request.headers.get("Ice-Name") or broadcaster)
    except RuntimeError:
        return reject(409, "source_busy", "another source is already live on this channel")
    log.info("live source connected", extra={"channel": name, "broadcaster": broadcaster, "format": fmt})
    received = 0
    try:
        async for data in body.iter_any():
            received += len(data)
            while not session.feed(data):  # noqa: ASYNC110 (the queue is filled by a thread, not the loop)
                await asyncio.sleep(0.02)  # the decoder is behind: hold back the client (TCP backpressure)
            if session.error and not session.started.is_set():
                break
            if received > PROBE_LIMIT and not session.started.is_set():
                await asyncio.sleep(0.2)
                if not session.started.is_set():
                    session.error = session.error or "no audio found"
                    break
    finally:
        session.end()
    await asyncio.to_thread(session.finished.wait, 5)
    log.info("live source disconnected", extra={"channel": name, "bytes": received, "error": session.error})
    if not session.started.is_set():
        return reject(400, "undecodable_source", f"the body is not {fmt} audio: {session.error or 'no audio'}")
    return web.json_response({"status": "ended", "bytes": received,
                              "seconds": round(session.decoded_samples / 48000, 3)})
