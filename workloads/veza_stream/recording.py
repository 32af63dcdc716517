"""The channel's stream archived to S3 by the replica that encodes it.

- with `recording.enabled`, every rendition, cut into files of ``seconds`` of audio at the same timestamps on every
  rendition (pts counted since the channel began, as for HLS), each a file that decodes on
  its own (Ogg files start with the stream's header pages):
  ``recordings/{channel}/{rendition}/{YYYY-MM-DD}/{HH}/{YYYYmmddTHHMMSSZ}-{pts}.{mp3|aac|ogg}``
  (the wall-clock time is when the file's first audio was encoded, UTC);
- with `delivery.hls.archive` (the default), every HLS segment as it is cut:
  ``channels/{channel}/hls/{rendition}/{sequence}.{mp3|aac|m4s}``, and for fMP4 (Opus) renditions
  their init segment, ``channels/{channel}/hls/{rendition}/init.mp4``, whenever it changes.

Uploads run one at a time in the background with a bounded queue; when S3 is slow or down,
the oldest waiting file is dropped and counted (``veza_stream_recording_dropped_total``), so
recording never holds back the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

from veza_core.storage import ObjectStore

from .hls import EXTENSIONS as HLS_EXTENSIONS
from .hls import INIT_NAME, INIT_TYPE, SEGMENT_TYPES, Segment
from .metrics import RECORDING_DROPPED, RECORDING_UPLOADED
from .pump import Batch
from .transcoder import CONTENT_TYPES, SAMPLE_RATE, Chunk

log = logging.getLogger(__name__)

FILE_EXTENSIONS = {"mp3": "mp3", "aac": "aac", "opus": "ogg"}


class _Part:
    __slots__ = ("data", "index", "pts", "wall")

    def __init__(self, index: int, pts: int, wall: float) -> None:
        self.index = index
        self.pts = pts
        self.wall = wall
        self.data = bytearray()


class Recorder:
    def __init__(self, store: ObjectStore, channel: str, codecs: dict[str, str], *, seconds: float = 60.0,
                 max_pending: int = 64) -> None:
        self.store = store
        self.channel = channel
        self.codecs = codecs  # rendition name -> codec
        self.samples = max(1, int(seconds * SAMPLE_RATE))
        self.headers: dict[str, bytes] = {}
        self.inits: dict[str, bytes] = {}  # the fMP4 init segment stored last, per rendition
        self.parts: dict[str, _Part] = {}
        self.queue: deque[tuple[str, bytes, str]] = deque()
        self.max_pending = max_pending
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()  # set after each upload attempt
        self.task: asyncio.Task[None] | None = None
        self.uploaded = 0

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.create_task(self._upload_loop())

    async def stop(self) -> None:
        """Upload what was recorded so far (the current files, cut short), then stop."""
        for rendition in list(self.parts):
            self._close(rendition)
        if self.task is not None:
            self.wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained(), 10)
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
            self.task = None

    async def _drained(self) -> None:
        while self.queue:
            self.idle.clear()
            await self.idle.wait()

    # -- inputs (event loop) ------------------------------------------------------------------------
    def on_batch(self, batch: Batch, _title: str) -> None:
        for rendition, chunks in batch.items():
            if rendition in self.codecs:
                self._add(rendition, chunks)

    def on_segment(self, rendition: str, segment: Segment) -> None:
        codec = self.codecs.get(rendition, "mp3")
        prefix = f"channels/{self.channel}/hls/{rendition}"
        if segment.init is not None and self.inits.get(rendition) != segment.init:
            self.inits[rendition] = segment.init
            self._enqueue(f"{prefix}/{INIT_NAME}", segment.init, INIT_TYPE)
        self._enqueue(f"{prefix}/{segment.sequence}.{HLS_EXTENSIONS[codec]}", segment.data, SEGMENT_TYPES[codec])

    def _add(self, rendition: str, chunks: list[Chunk]) -> None:
        for chunk in chunks:
            if chunk.header:
                self.headers[rendition] = chunk.data
                self._close(rendition)  # a new Ogg stream starts: a new file
                continue
            index = chunk.pts // self.samples
            part = self.parts.get(rendition)
            if part is not None and part.index != index:
                self._close(rendition)
                part = None
            if part is None:
                part = self.parts[rendition] = _Part(index, chunk.pts, time.time())
                part.data += self.headers.get(rendition, b"")
            part.data += chunk.data

    def _close(self, rendition: str) -> None:
        part = self.parts.pop(rendition, None)
        if part is None or len(part.data) <= len(self.headers.get(rendition, b"")):
            return
        codec = self.codecs[rendition]
        stamp = time.gmtime(part.wall)
        key = (f"recordings/{self.channel}/{rendition}/{time.strftime('%Y-%m-%d/%H', stamp)}/"
               f"{time.strftime('%Y%m%dT%H%M%SZ', stamp)}-{part.pts}.{FILE_EXTENSIONS[codec]}")
        self._enqueue(key, bytes(part.data), CONTENT_TYPES[codec])

    def _enqueue(self, key: str, body: bytes, content_type: str) -> None:
        if len(self.queue) >= self.max_pending:
            dropped, _, _ = self.queue.popleft()
            RECORDING_DROPPED.labels(self.channel).inc()
            log.warning("recording upload dropped", extra={"channel": self.channel, "key": dropped})
        self.queue.append((key, body, content_type))
        self.wake.set()

    # -- uploads ------------------------------------------------------------------------------------
    async def _upload_loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue:
                key, body, content_type = self.queue[0]
                try:
                    await self.store.put(key, body, content_type)
                except Exception as exc:
                    log.warning("recording upload failed", extra={"channel": self.channel, "key": key,
                                                                  "error": repr(exc)})
                    await asyncio.sleep(1.0)  # S3 down: retry; the queue bound drops the oldest meanwhile
                    continue
                finally:
                    self.idle.set()
                if self.queue and self.queue[0][0] == key:
                    self.queue.popleft()
                self.uploaded += 1
                RECORDING_UPLOADED.labels(self.channel).inc()
