"""`POST /stream/{channel}/tracks[?id=<track id>]`: an upload into the channel's track library (:mod:`library`).

Without `id` the worker names the track (a uuid); an id already stored is refused (409), never replaced.

The API's upload endpoint (or an operator with a broadcaster token) sends the raw file.
Every refusal counts in veza_stream_ingest_rejected_total under its code.
"""

from __future__ import annotations

import logging
import re
import uuid

from aiohttp import web

from veza_core.web import HttpError

from .access import ACCESS, client_address
from .library import LIBRARY
from .metrics import INGEST_REJECTED
from .probe import MAX_TRACK_BYTES

log = logging.getLogger("veza.stream")

MAX_UPLOAD_BYTES = MAX_TRACK_BYTES + 1
TRACK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


async def upload(request: web.Request) -> web.Response:
    access = request.app[ACCESS]
    try:
        broadcaster = await access.broadcaster(request)
        # Without an id the worker names the track; with one, it must be new (never an overwrite).
        track_id = request.query.get("id") or uuid.uuid4().hex
        if not TRACK_ID.match(track_id):
            raise HttpError(400, "bad_track_id", "query parameter id must match [A-Za-z0-9][A-Za-z0-9_-]{0,63}")
        too_large = HttpError(413, "track_too_large", f"tracks are limited to {MAX_TRACK_BYTES} bytes")
        if request.content_length is not None and request.content_length > MAX_TRACK_BYTES:
            raise too_large
        try:
            data = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        stored = await request.app[LIBRARY].add(track_id, data, request.content_type or "application/octet-stream")
        log.info("track stored", extra={"channel": access.channel, "track": track_id, "by": broadcaster,
                                        "remote": client_address(request), "bytes": len(data)})
    except HttpError as exc:
        INGEST_REJECTED.labels(access.channel, exc.code).inc()
        raise
    return web.json_response(stored, status=201)
