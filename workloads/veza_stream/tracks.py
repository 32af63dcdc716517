"""`POST /stream/{channel}/tracks[?id=<track id>]`: an upload into the channel's track library (:mod:`library`).

Without `id` the worker names the track (a uuid); an id already stored is refused (409), never replaced.

The API's upload endpoint (or an operator with a broadcaster token) sends the raw file. It goes to a temporary file
as it arrives (never whole into memory), and at most `VEZA_STREAM_MAX_UPLOADS` uploads run at once per replica.
Every refusal counts in veza_stream_ingest_rejected_total under its code.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from typing import BinaryIO

from aiohttp import web

from veza_core.web import HttpError, json_response

from .access import ACCESS
from .library import LIBRARY
from .metrics import INGEST_REJECTED, UPLOADS_IN_PROGRESS
from .probe import MAX_TRACK_BYTES

log = logging.getLogger("veza.stream")

MAX_UPLOAD_BYTES = MAX_TRACK_BYTES + 1
TOO_LARGE = HttpError(413, "track_too_large", f"tracks are limited to {MAX_TRACK_BYTES} bytes")
RETRY_AFTER = 10  # seconds: an upload is probed and transcoded in about that (a few minutes of audio)
# Uploads in progress on this replica (VEZA_STREAM_MAX_UPLOADS): each holds its file and renditions on disk and one
# core transcoding; beyond it, 503 `uploads_busy` with Retry-After.
UPLOAD_SLOTS: web.AppKey[asyncio.Semaphore] = web.AppKey("stream_upload_slots", asyncio.Semaphore)


async def receive(request: web.Request, body: BinaryIO) -> int:
    """The request's body into `body` as it arrives (never whole in memory); its size, or 413 past the limit."""
    size = 0
    async for data in request.content.iter_chunked(1 << 16):
        size += len(data)
        if size > MAX_TRACK_BYTES:
            raise TOO_LARGE
        body.write(data)
    return size


async def upload(request: web.Request) -> web.Response:
    access = request.app[ACCESS]
    try:
        broadcaster = await access.broadcaster(request)
        if "id" in request.query:  # ids chosen by uploaders could name, and so replace, someone else's track
            raise HttpError(400, "track_id_not_accepted", "the worker names every track: upload without ?id=")
        if request.content_length is not None and request.content_length > MAX_TRACK_BYTES:
            raise TOO_LARGE
        slots = request.app[UPLOAD_SLOTS]
        if slots.locked():
            raise HttpError(503, "uploads_busy", "as many uploads as this replica takes are in progress; retry",
                            headers={"Retry-After": str(RETRY_AFTER)})
        async with slots:
            in_progress = UPLOADS_IN_PROGRESS.labels(access.channel)
            with in_progress.track_inprogress(), tempfile.TemporaryFile(prefix="veza-upload-") as body:
                size = await receive(request, body)
                stored = await request.app[LIBRARY].add(body, request.content_type or "application/octet-stream")
        log.info("track stored", extra={"channel": access.channel, "track": stored["id"], "by": broadcaster,
                                        "remote": access.client(request), "bytes": size})
    except HttpError as exc:
        INGEST_REJECTED.labels(access.channel, exc.code).inc()
        raise
    return json_response(stored, status=201)
