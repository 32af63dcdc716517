"""The channel's track library in S3: an upload probed, stored as it came and in every rendition.

S3 layout: `channels/{channel}/tracks/{id}/original` plus `.../{rendition}.{ext}`, the id chosen here.
A channel's credentials (its source password, a broadcaster token) write under that channel's
prefix only: never the API's `tracks/{id}` (the playlist's bare ids) nor another channel's. A
playlist plays such an upload by its key (`original` in the answer).
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import uuid
from typing import Any, BinaryIO

from aiohttp import web

from veza_core.storage import ObjectStore

from .probe import probe
from .sources import decode
from .spec import Rendition
from .transcoder import Transcoder

EXTENSIONS = {"mp3": "mp3", "aac": "aac", "opus": "ogg"}


def transcode_file(source: BinaryIO, renditions: list[Rendition]) -> dict[str, BinaryIO]:
    """Every rendition of a whole file, each into a temporary file (blocking: run it in a thread). A rendition of a
    three-hour track is larger than the upload may be: it is not held in memory either."""
    transcoder = Transcoder(renditions)
    out: dict[str, BinaryIO] = {}
    try:
        for name, header in transcoder.headers().items():
            out[name] = tempfile.TemporaryFile(prefix=f"veza-{name}-")  # noqa: SIM115 - closed by the caller
            out[name].write(header)
        source.seek(0)
        for frame, _ in decode(source):
            for name, chunks in transcoder.encode(frame).items():
                out[name].writelines(chunk.data for chunk in chunks)
    except BaseException:
        for body in out.values():
            body.close()
        raise
    for body in out.values():
        body.seek(0)
    return out


class TrackLibrary:
    def __init__(self, store: ObjectStore, renditions: list[Rendition], channel: str) -> None:
        self.store = store
        self.renditions = renditions
        self.channel = channel

    async def add(self, body: BinaryIO, content_type: str) -> dict[str, Any]:
        """Probe and store an upload, a file read from the start (ProbeError if it is not usable audio), under a
        new id: what was stored, what the probe found. Files go to S3 in parts, never whole in memory. The bucket
        is the platform's: naming the id here means an upload never replaces anything."""
        track_id = uuid.uuid4().hex
        prefix = f"channels/{self.channel}/tracks/{track_id}"
        info = await asyncio.to_thread(probe, body)
        renditions = await asyncio.to_thread(transcode_file, body, self.renditions)
        try:
            await self.store.put_file(f"{prefix}/original", body, content_type)
            codecs = {r.name: r.codec for r in self.renditions}
            stored = {}
            for rendition, encoded in renditions.items():
                key = f"{prefix}/{rendition}.{EXTENSIONS[codecs[rendition]]}"
                codec = codecs[rendition]
                await self.store.put_file(key, encoded, "audio/" + ("ogg" if codec == "opus" else codec))
                stored[rendition] = key
        finally:
            for encoded in renditions.values():
                encoded.close()
        return {"id": track_id, "original": f"{prefix}/original", "renditions": stored, **dataclasses.asdict(info)}


LIBRARY: web.AppKey[TrackLibrary] = web.AppKey("stream_library", TrackLibrary)
