"""The channel's track library in S3: an upload probed, stored as it came and in every rendition.

S3 layout: `tracks/{id}/original` plus `tracks/{id}/{rendition}.{ext}`; the playlist plays
`tracks/{id}/original` for a bare track id.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from aiohttp import web

from veza_core.storage import ObjectStore
from veza_core.web import HttpError

from .probe import probe
from .sources import decode
from .spec import Rendition
from .transcoder import Transcoder

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


class TrackLibrary:
    def __init__(self, store: ObjectStore, renditions: list[Rendition]) -> None:
        self.store = store
        self.renditions = renditions

    async def add(self, track_id: str, data: bytes, content_type: str) -> dict[str, Any]:
        """Probe and store an upload (ProbeError if it is not usable audio): what was stored, what the probe found.

        A stored track is never replaced: the bucket is shared by the platform's channels, and a
        broadcaster of one must not overwrite another's tracks (HttpError 409 `track_exists`)."""
        prefix = f"tracks/{track_id}"
        if await self.store.head(f"{prefix}/original") is not None:
            raise HttpError(409, "track_exists", f"track {track_id!r} exists; upload under a new id")
        info = await asyncio.to_thread(probe, data)
        renditions = await asyncio.to_thread(transcode_file, data, self.renditions)
        await self.store.put(f"{prefix}/original", data, content_type)
        codecs = {r.name: r.codec for r in self.renditions}
        stored = {}
        for rendition, body in renditions.items():
            key = f"{prefix}/{rendition}.{EXTENSIONS[codecs[rendition]]}"
            await self.store.put(key, body, "audio/" + ("ogg" if codecs[rendition] == "opus" else codecs[rendition]))
            stored[rendition] = key
        return {"id": track_id, "original": f"{prefix}/original", "renditions": stored, **dataclasses.asdict(info)}


LIBRARY: web.AppKey[TrackLibrary] = web.AppKey("stream_library", TrackLibrary)
