"""The channel's track library in S3: an upload probed, stored as it came and in every rendition.

S3 layout: `tracks/{id}/original` plus `tracks/{id}/{rendition}.{ext}`; the playlist plays
`tracks/{id}/original` for a bare track id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
from typing import Any, BinaryIO

from aiohttp import web

from veza_core.storage import ObjectStore
from veza_core.web import HttpError

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
    def __init__(self, store: ObjectStore, renditions: list[Rendition]) -> None:
        self.store = store
        self.renditions = renditions

    async def add(self, track_id: str, body: BinaryIO, content_type: str) -> dict[str, Any]:
        """Probe and store an upload, a file read from the start (ProbeError if it is not usable audio): what was
        stored, what the probe found. Files go to S3 in parts (multipart above 8 MiB), never whole in memory.

        A stored track is never replaced: the bucket is shared by the platform's channels, and a
        broadcaster of one must not overwrite another's tracks (HttpError 409 `track_exists`)."""
        prefix = f"tracks/{track_id}"
        if await self.store.head(f"{prefix}/original") is not None:
            raise HttpError(409, "track_exists", f"track {track_id!r} exists; upload under a new id")
        info = await asyncio.to_thread(probe, body)
        renditions = await asyncio.to_thread(transcode_file, body, self.renditions)
        try:
            await self._put(f"{prefix}/original", body, content_type)
            codecs = {r.name: r.codec for r in self.renditions}
            stored = {}
            for rendition, encoded in renditions.items():
                key = f"{prefix}/{rendition}.{EXTENSIONS[codecs[rendition]]}"
                codec = codecs[rendition]
                await self._put(key, encoded, "audio/" + ("ogg" if codec == "opus" else codec))
                stored[rendition] = key
        finally:
            for encoded in renditions.values():
                encoded.close()
        return {"id": track_id, "original": f"{prefix}/original", "renditions": stored, **dataclasses.asdict(info)}

    async def _put(self, key: str, body: BinaryIO, content_type: str) -> None:
        body.seek(0)
        await asyncio.to_thread(self.store.client.upload_fileobj, body, self.store.bucket, key,
                                ExtraArgs={"ContentType": content_type})


LIBRARY: web.AppKey[TrackLibrary] = web.AppKey("stream_library", TrackLibrary)
