"""Where the channel's audio comes from: a playlist in S3, a live source client, a relay.

Sources are read from the encoder thread (:mod:`veza_stream.pump`) and return
canonical frames (see :func:`veza_stream.transcoder.resampler`). A pushed source
(live ingest, relay) is decoded in its own thread from a bounded byte pipe, so a
stalled or malformed input never blocks the encoder: the pump just moves on to
the fallback.
"""

from __future__ import annotations

import io
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import av

from .transcoder import resampler

log = logging.getLogger(__name__)

# Fetches a track's bytes (blocking); raises on failure.
TrackFetcher = Callable[[str], bytes]


def track_key(track: str) -> str:
    """A playlist entry is an S3 key (has a slash) or a track id stored by track ingestion."""
    return track if "/" in track else f"tracks/{track}/original"


def _title(container: Any, fallback: str) -> str:
    # Ogg keeps tags in the stream (Vorbis comments), most other formats in the container.
    tags = {**(container.streams.audio[0].metadata or {}), **(container.metadata or {})}
    meta = {k.lower(): v for k, v in tags.items()}
    if meta.get("title"):
        return f"{meta['artist']} - {meta['title']}" if meta.get("artist") else str(meta["title"])
    return fallback


# How much of a pushed stream libavformat reads before the first frame comes out. Every byte probed is audio that
# queues up before the encoder sees any: 32 KiB was 1.2 s of a 128 kbps MP3 source, and stayed as latency.
PUSHED_PROBE_BYTES = 8192


def decode(data: bytes | Any, fmt: str | None = None) -> Iterator[tuple[av.AudioFrame, Any]]:
    """Canonical frames of the first audio stream of a file or file-like object, with its container."""
    with av.open(data if not isinstance(data, bytes) else io.BytesIO(data), "r", format=fmt,
                 options={"probesize": str(PUSHED_PROBE_BYTES), "analyzeduration": "0"} if fmt else None
                 ) as container:
        if not container.streams.audio:
            raise av.error.InvalidDataError(1, "no audio stream")
        convert = resampler()
        for frame in container.decode(audio=0):
            for out in convert.resample(frame):
                yield out, container
        for out in convert.resample(None):
            yield out, container


class PlaylistSource:
    """Tracks played in order (or reshuffled every pass); the next track is fetched while one plays."""

    def __init__(self, tracks: list[str], fetch: TrackFetcher, *, shuffle: bool = False, name: str = "playlist",
                 retry_seconds: float = 5.0) -> None:
        self.name = name
        self.tracks = list(tracks)
        self.fetch = fetch
        self.shuffle = shuffle
        self.retry_seconds = retry_seconds
        self.title = ""
        self._frames = self._play()
        self._idle_until = 0.0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"fetch-{name}")

    def active(self) -> bool:
        return bool(self.tracks) and time.monotonic() >= self._idle_until

    def read(self, timeout: float) -> av.AudioFrame | None:
        if not self.active():
            return None
        return next(self._frames, None)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _order(self) -> list[str]:
        order = list(self.tracks)
        if self.shuffle:
            random.shuffle(order)
        return order

    def _play(self) -> Iterator[av.AudioFrame | None]:
        while True:
            order = self._order()
            played = 0
            pending: Future[bytes] = self._pool.submit(self.fetch, track_key(order[0]))
            for i, track in enumerate(order):
                current = pending
                if i + 1 < len(order):
                    pending = self._pool.submit(self.fetch, track_key(order[i + 1]))
                try:
                    data = current.result()
                    for frame, container in decode(data):
                        self.title = _title(container, track.rsplit("/", 1)[-1])
                        played += 1
                        yield frame
                except Exception as exc:
                    log.warning("track skipped", extra={"track": track, "error": repr(exc)})
            if not played:
                # Nothing playable: stay off air for a while instead of spinning on S3.
                self._idle_until = time.monotonic() + self.retry_seconds
                yield None


class BytePipe(io.RawIOBase):
    """Bytes pushed by the event loop, read (blocking) by a decoder thread; None marks the end."""

    def __init__(self, max_chunks: int = 256) -> None:
        self.chunks: queue.Queue[bytes | None] = queue.Queue(max_chunks)
        self._rest = b""
        self._eof = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if not self._rest and not self._eof:
            chunk = self.chunks.get()
            if chunk is None:
                self._eof = True
            else:
                self._rest = chunk
        n = len(self._rest) if size is None or size < 0 else size
        out, self._rest = self._rest[:n], self._rest[n:]
        return out


class PushedSource:
    """Audio pushed in from outside (live ingest or relay), decoded in a thread of its own.

    One session at a time: :meth:`open` returns a :class:`Session` whose bytes are fed
    by the network side; the source is active while that session decodes audio.
    """

    def __init__(self, name: str, *, stall_seconds: float = 2.0) -> None:
        self.name = name
        self.stall_seconds = stall_seconds
        self.session: Session | None = None
        self.title = ""

    def busy(self) -> bool:
        return self.session is not None and not self.session.finished.is_set()

    def open(self, fmt: str, title: str = "") -> Session:
        if self.busy():
            raise RuntimeError("a session is already open")
        self.session = Session(fmt, self.name)
        self.title = title or "live"
        return self.session

    def active(self) -> bool:
        s = self.session
        return s is not None and s.decoding() and (
            not s.frames.empty() or time.monotonic() - s.last_frame_at < self.stall_seconds)

    def read(self, timeout: float) -> av.AudioFrame | None:
        s = self.session
        if s is None:
            return None
        try:
            return s.frames.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        if self.session:
            self.session.end()


class Session:
    def __init__(self, fmt: str, name: str) -> None:
        self.pipe = BytePipe()
        self.frames: queue.Queue[av.AudioFrame] = queue.Queue(100)
        self.started = threading.Event()  # first frame decoded
        self.finished = threading.Event()
        self.error: str | None = None
        self.last_frame_at = time.monotonic()
        self.decoded_samples = 0
        self._ended = False
        self._thread = threading.Thread(target=self._decode, args=(fmt,), name=f"decode-{name}", daemon=True)
        self._thread.start()

    def decoding(self) -> bool:
        return self.started.is_set() and (not self.finished.is_set() or not self.frames.empty())

    def feed(self, data: bytes) -> bool:
        """Queue bytes for the decoder; False when the pipe is full (the caller waits and retries)."""
        if self.finished.is_set():
            return True  # decoder gone: swallow, the caller checks `error`
        try:
            self.pipe.chunks.put_nowait(data)
            return True
        except queue.Full:
            return False

    def end(self) -> None:
        if self._ended:
            return
        self._ended = True
        while True:
            try:
                self.pipe.chunks.put(None, timeout=0.5)
                return
            except queue.Full:
                if self.finished.is_set():
                    return

    def _decode(self, fmt: str) -> None:
        try:
            for frame, _ in decode(self.pipe, fmt):
                self.frames.put(frame)
                self.last_frame_at = time.monotonic()
                self.decoded_samples += frame.samples
                self.started.set()
        except Exception as exc:
            self.error = str(exc) or type(exc).__name__
            log.info("source decoding stopped", extra={"error": self.error})
        finally:
            self.finished.set()
            # Unblock a feeder waiting on a full pipe.
            while True:
                try:
                    self.pipe.chunks.get_nowait()
                except queue.Empty:
                    break
