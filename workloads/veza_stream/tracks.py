"""`POST /stream/{channel}/tracks?id=<track id>`: an upload into the channel's track library (:mod:`library`).

The API's upload endpoint (or an operator with a broadcaster token) sends the raw file.
Every refusal counts in veza_stream_ingest_rejected_total under its code.
"""

from __future__ import annotations

import re

from aiohttp import web

from veza_core.web import HttpError

from .access import ACCESS
from .library import LIBRARY
from .metrics import INGEST_REJECTED
from .probe import MAX_TRACK_BYTES

MAX_UPLOAD_BYTES = MAX_TRACK_BYTES + 1
TRACK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


async def upload(request: web.Request) -> web.Response:
    access = request.app[ACCESS]
    try:
        await access.broadcaster(request)
        track_id = request.query.get("id", "")
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
    except HttpError as exc:
        INGEST_REJECTED.labels(access.channel, exc.code).inc()
        raise
    return web.json_response(stored, status=201)
