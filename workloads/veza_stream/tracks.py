"""`POST /stream/{channel}/tracks?id=<track id>`: probe an upload, store it and its renditions in S3.

The API's upload endpoint (or an operator with a broadcaster token) sends the raw
file. S3 layout: `tracks/{id}/original` plus `tracks/{id}/{rendition}.{ext}`; the
playlist plays `tracks/{id}/original` for a bare track id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re

from aiohttp import web

from veza_core.web import json_error

from .access import AccessDenied, check_broadcaster
from .metrics import INGEST_REJECTED
from .probe import MAX_TRACK_BYTES, ProbeError, probe
from .sources import decode
from .spec import Rendition
from .state import WORKER
from .transcoder import Transcoder

MAX_UPLOAD_BYTES = MAX_TRACK_BYTES + 1
TRACK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
EXTENSIONS = {"mp3": "mp3", "aac": "aac", "opus": "ogg"}


def transcode_file(data: bytes, renditions: list[Rendition]) -> dict[str, bytes]:
    """Every rendition of a whole file (blocking: run it in a thread)."""
    transcoder = Transcoder(renditions)
    out = {name: bytearray(header) for name, header in transcoder.headers().items()}
    for frame, _ in decode(data):
        for name, chunks in transcoder.encode(frame).items():
            for chunk in chunks:
                out[name] += chunk.data
    return {name: bytes(body) for name, body in out.items()}


async def upload(request: web.Request) -> web.Response:
    worker = request.app[WORKER]
    name = worker.channel.name

    def reject(status: int, code: str, message: str) -> web.Response:
        INGEST_REJECTED.labels(name, code).inc()
        return json_error(status, code, message)

    try:
        check_broadcaster(request, name, worker.source_password, worker.verifier)
    except AccessDenied as exc:
        return reject(exc.status, exc.code, exc.message)
    track_id = request.query.get("id", "")
    if not TRACK_ID.match(track_id):
        return reject(400, "bad_track_id", "query parameter id must match [A-Za-z0-9][A-Za-z0-9_-]{0,63}")
    if request.content_length is not None and request.content_length > MAX_TRACK_BYTES:
        return reject(413, "track_too_large", f"tracks are limited to {MAX_TRACK_BYTES} bytes")
    try:
        data = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return reject(413, "track_too_large", f"tracks are limited to {MAX_TRACK_BYTES} bytes")
    try:
        info = await asyncio.to_thread(probe, data)
    except ProbeError as exc:
        return reject(exc.status, exc.code, exc.message)
    renditions = await asyncio.to_thread(transcode_file, data, worker.spec.renditions)
    prefix = f"tracks/{track_id}"
    await worker.store.put(f"{prefix}/original", data, request.content_type or "application/octet-stream")
    codecs = {r.name: r.codec for r in worker.spec.renditions}
    stored = {}
    for rendition, body in renditions.items():
        key = f"{prefix}/{rendition}.{EXTENSIONS[codecs[rendition]]}"
        await worker.store.put(key, body, "audio/" + ("ogg" if codecs[rendition] == "opus" else codecs[rendition]))
        stored[rendition] = key
    return web.json_response({"id": track_id, "original": f"{prefix}/original", "renditions": stored,
                              **dataclasses.asdict(info)}, status=201)
