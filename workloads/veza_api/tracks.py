"""Tracks: audio uploaded for playlists, stored in S3 where the stream worker
transcodes from (`tracks/{id}/original`), probed with PyAV on the way in.

Only what PyAV can open, holding an audio stream in a codec we accept whose
first frames decode, gets stored; everything else is refused with a 4xx.

Memory stays bounded: the body goes to a temporary file, the probe decodes a few
frames, S3 receives the file in parts; and at most `max_concurrent_uploads`
uploads run at once per API process (others get 503 with Retry-After).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import av
from aiohttp import web
from prometheus_client import Gauge

from veza_core.auth import Principal
from veza_core.media import UNTRUSTED_AUDIO
from veza_core.web import HttpError, json_response

from .context import API, client_ip
from .errors import forbidden, not_found, parse_uuid
from .rbac import is_platform_admin, require_user, user_id
from .services import audit

ACCEPTED_CODECS = frozenset({"mp3", "mp3float", "aac", "opus", "libopus", "vorbis", "libvorbis", "flac", "alac",
                             "pcm_s16le", "pcm_s24le", "pcm_s32le", "pcm_f32le", "pcm_u8", "pcm_s16be"})
CONTENT_TYPES = {"mp3": "audio/mpeg", "ogg": "audio/ogg", "wav": "audio/wav", "flac": "audio/flac",
                 "aac": "audio/aac", "mov,mp4,m4a,3gp,3g2,mj2": "audio/mp4", "matroska,webm": "audio/webm"}
FRAMES_TO_DECODE = 50  # enough to catch a broken stream without decoding hours of audio
UPLOADS = web.AppKey("veza_api_uploads", asyncio.Semaphore)  # uploads in progress, bounded per process
UPLOADS_IN_PROGRESS = Gauge("veza_api_uploads_in_progress", "Track uploads being received, probed or stored")


class ProbeError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Probe:
    container: str
    codec: str
    duration_s: float
    sample_rate: int | None
    channels: int | None

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES.get(self.container, "application/octet-stream")


def probe(path: str) -> Probe:
    """What the file holds; raises ProbeError for anything we would not stream."""
    try:
        with av.open(path, metadata_errors="ignore", container_options=UNTRUSTED_AUDIO) as container:
            audio = next((s for s in container.streams if s.type == "audio"), None)
            if audio is None:
                raise ProbeError(415, "unsupported_media", "the file holds no audio stream")
            codec = audio.codec_context.name
            if codec not in ACCEPTED_CODECS:
                raise ProbeError(415, "unsupported_media", f"audio codec {codec!r} is not accepted")
            if container.duration:
                duration = container.duration / av.time_base
            elif audio.duration and audio.time_base:
                duration = float(audio.duration * audio.time_base)
            else:
                duration = 0.0
            frames = 0
            for _ in container.decode(audio):
                frames += 1
                if frames >= FRAMES_TO_DECODE:
                    break
            if frames == 0 or duration <= 0:
                raise ProbeError(422, "corrupt_media", "the audio does not decode")
            return Probe(container=container.format.name, codec=codec, duration_s=round(duration, 3),
                         sample_rate=getattr(audio.codec_context, "sample_rate", None) or None,
                         channels=getattr(audio.codec_context, "channels", None) or None)
    except av.FFmpegError as exc:
        raise ProbeError(422, "corrupt_media", "the file is not readable audio") from exc


async def _may_upload(request: web.Request) -> bool:
    """Platform admins and broadcasters of any channel manage tracks."""
    who = require_user(request)
    if await is_platform_admin(request, who):
        return True
    return bool(await request.app[API].pool.fetchval(
        "SELECT 1 FROM channel_roles WHERE user_id = $1 AND role = 'broadcaster' LIMIT 1", user_id(who)))


def _json(row: asyncpg.Record) -> dict[str, Any]:
    return {"id": str(row["id"]), "title": row["title"], "owner_id": str(row["owner_id"]),
            "object_key": row["object_key"], "content_type": row["content_type"], "size_bytes": row["size_bytes"],
            "duration_s": row["duration_s"], "codec": row["codec"], "container": row["container"],
            "sample_rate": row["sample_rate"], "channels": row["channels"],
            "created_at": row["created_at"].isoformat()}


async def upload(request: web.Request) -> web.Response:
    """POST /api/v1/tracks?title=...: the raw audio file as the body."""
    who = require_user(request)
    if not await _may_upload(request):
        raise forbidden("admins and broadcasters only")
    title = request.query.get("title", "").strip()
    if not 1 <= len(title) <= 200:
        raise HttpError(422, "invalid_title", "give the track a title of 1 to 200 characters (?title=)")
    uploads = request.app[UPLOADS]
    if uploads.locked():  # refuse at once rather than queue bodies the client is still sending
        raise HttpError(503, "uploads_busy", "too many uploads in progress; retry shortly",
                        headers={"Retry-After": "5"})
    async with uploads:
        with UPLOADS_IN_PROGRESS.track_inprogress():
            return await _store_upload(request, who, title)


async def _store_upload(request: web.Request, who: Principal, title: str) -> web.Response:
    ctx = request.app[API]
    limit = ctx.settings.max_track_bytes
    fd, path = tempfile.mkstemp(prefix="veza-track-")
    try:
        size = 0
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.content.iter_chunked(256 * 1024):
                size += len(chunk)
                if size > limit:
                    raise HttpError(413, "body_too_large", f"tracks are limited to {limit} bytes")
                out.write(chunk)
        if size == 0:
            raise HttpError(422, "corrupt_media", "the body is empty")
        try:
            found = await asyncio.to_thread(probe, path)
        except ProbeError as exc:
            raise HttpError(exc.status, exc.code, exc.message) from exc
        if found.duration_s > ctx.settings.max_track_seconds:
            raise HttpError(422, "too_long", f"tracks are limited to {ctx.settings.max_track_seconds:.0f} s")
        track_id = uuid.uuid4()
        key = f"tracks/{track_id}/original"
        await ctx.store.put_file(key, path, found.content_type, title=title.encode("ascii", "replace").decode(),
                                 codec=found.codec, duration=str(found.duration_s))
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
    row = await ctx.pool.fetchrow(
        "INSERT INTO tracks (id, title, owner_id, object_key, content_type, size_bytes, duration_s, codec,"
        " container, sample_rate, channels) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING *",
        track_id, title, user_id(who), key, found.content_type, size, found.duration_s, found.codec,
        found.container, found.sample_rate, found.channels)
    await audit.record(ctx.pool, "track.uploaded", actor=who.subject, subject=str(track_id), ip=client_ip(request),
                       size=size, codec=found.codec)
    return json_response(_json(row), status=201)


async def list_tracks(request: web.Request) -> web.Response:
    if not await _may_upload(request):
        raise forbidden("admins and broadcasters only")
    rows = await request.app[API].lists.fetch("SELECT * FROM tracks ORDER BY created_at DESC LIMIT 500")
    return json_response({"tracks": [_json(r) for r in rows]})


async def get_track(request: web.Request) -> web.Response:
    if not await _may_upload(request):
        raise forbidden("admins and broadcasters only")
    row = await request.app[API].pool.fetchrow("SELECT * FROM tracks WHERE id = $1",
                                           parse_uuid(request.match_info["id"], "track"))
    if row is None:
        raise not_found("track")
    return json_response(_json(row))


async def delete_track(request: web.Request) -> web.Response:
    """Owners and admins; removes the original and whatever the stream worker derived from it."""
    who = require_user(request)
    ctx = request.app[API]
    track_id = parse_uuid(request.match_info["id"], "track")
    row = await ctx.pool.fetchrow("SELECT owner_id FROM tracks WHERE id = $1", track_id)
    if row is None:
        raise not_found("track")
    if row["owner_id"] != user_id(who) and not await is_platform_admin(request, who):
        raise forbidden("only the owner or an admin deletes a track")
    for key in await ctx.store.list(f"tracks/{track_id}/"):
        await ctx.store.delete(key)
    await ctx.pool.execute("DELETE FROM tracks WHERE id = $1", track_id)
    await audit.record(ctx.pool, "track.deleted", actor=who.subject, subject=str(track_id), ip=client_ip(request))
    return web.Response(status=204)
