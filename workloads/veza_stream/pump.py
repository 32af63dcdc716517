"""The encoder thread: pick the source on air, encode, pace to real time, hand batches to the event loop.

The source on air is the primary (live, relay or playlist) while it has audio, else
the fallback playlist, else silence, so listeners and HLS keep flowing whatever
happens upstream. Output is paced by a wall clock: a playlist is encoded at most
``lead`` seconds ahead of real time, a pushed source (live, relay) as its frames
arrive (its sender is its clock) unless it runs ``max_lead`` ahead, and a source that
falls behind (a stalled live client) moves the clock instead of causing a burst later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

import av
from opentelemetry import trace

from .metrics import ENCODE_LATENCY, ENCODED_SECONDS, SOURCE_ACTIVE
from .sources import PushedSource
from .transcoder import CANONICAL_FORMAT, LAYOUT, SAMPLE_RATE, Chunk, Transcoder

log = logging.getLogger(__name__)
tracer = trace.get_tracer("veza.stream")

Batch = dict[str, list[Chunk]]


class Source(Protocol):
    name: str
    title: str

    def active(self) -> bool: ...

    def read(self, timeout: float) -> av.AudioFrame | None: ...

    def close(self) -> None: ...


def silence(samples: int = 1024) -> av.AudioFrame:
    # PyAV allocates the planes uninitialised; zero bytes are 0.0 floats. (Half the cost of from_ndarray, and no
    # numpy at run time.)
    frame = av.AudioFrame(format=CANONICAL_FORMAT, layout=LAYOUT, samples=samples)
    for plane in frame.planes:
        plane.update(bytes(plane.buffer_size))
    frame.sample_rate = SAMPLE_RATE
    return frame


class Pump(threading.Thread):
    def __init__(self, channel: str, transcoder: Transcoder, sources: list[Source],
                 deliver: Callable[[Batch, str, str], None], *, lead: float = 0.3, max_lead: float = 2.0,
                 batch_seconds: float = 0.1) -> None:
        super().__init__(name=f"pump-{channel}", daemon=True)
        self.channel = channel
        self.transcoder = transcoder
        self.sources = sources
        self.deliver = deliver  # called from this thread with each batch, its title and the name of its source
        self.lead = lead
        self.max_lead = max_lead
        self.batch_samples = int(batch_seconds * SAMPLE_RATE)
        self.stopping = threading.Event()
        self.on_air = "silence"

    def stop(self) -> None:
        self.stopping.set()

    def _choose(self) -> Source | None:
        return next((s for s in self.sources if s.active()), None)

    def run(self) -> None:
        headers = {n: h for n, h in self.transcoder.headers().items() if h}
        first = self.transcoder.encoders[next(iter(self.transcoder.encoders))].pts
        if headers:
            self.deliver({n: [Chunk(h, first, 0, header=True)] for n, h in headers.items()}, "", self.on_air)
        produced = 0
        started = time.monotonic()
        batch: Batch = {name: [] for name in self.transcoder.encoders}
        batched = 0
        self.batch_started_ns, self.batch_encode_seconds = 0, 0.0  # what a batch's span reports
        while not self.stopping.is_set():
            source = self._choose()
            name = source.name if source else "silence"
            if name != self.on_air:
                log.info("source on air", extra={"channel": self.channel, "source": name, "previous": self.on_air})
                SOURCE_ACTIVE.labels(self.channel, self.on_air).set(0)
                SOURCE_ACTIVE.labels(self.channel, name).set(1)
                self.on_air = name
            frame = source.read(0.1) if source else silence()
            if frame is None:
                if batched:
                    self._flush(batch, source)
                    batched = 0
                continue
            t0 = time.perf_counter()
            if not batched:
                self.batch_started_ns = time.time_ns()
            try:
                encoded = self.transcoder.encode(frame)
            except (ValueError, av.error.FFmpegError) as exc:  # a frame the encoders refuse: skip it, keep going
                log.warning("frame not encoded", extra={"channel": self.channel, "source": name, "error": repr(exc)})
                continue
            for rendition, chunks in encoded.items():
                batch[rendition].extend(chunks)
            encode_seconds = time.perf_counter() - t0
            ENCODE_LATENCY.labels(self.channel).observe(encode_seconds)
            self.batch_encode_seconds += encode_seconds
            produced += frame.samples
            batched += frame.samples
            ENCODED_SECONDS.labels(self.channel).inc(frame.samples / SAMPLE_RATE)
            ahead = produced / SAMPLE_RATE - (time.monotonic() - started)
            if ahead < -0.5:
                started = time.monotonic() - produced / SAMPLE_RATE  # fell behind: rebase, never catch up in a burst
            # A pushed source (live, relay) is paced by its sender: each frame is encoded as it arrives, since waiting
            # for the wall clock would hold the frames queued behind the encoder back as latency (they queued for as
            # long as the wait, then went out in a burst: 0.3-0.5 s more at random). Only a sender running more than
            # `max_lead` ahead of real time is paced; a file is read `lead` ahead.
            limit = self.max_lead if isinstance(source, PushedSource) else self.lead
            if batched >= self.batch_samples or ahead > limit:
                self._flush(batch, source)
                batched = 0
            if ahead > limit:
                self.stopping.wait(ahead - limit)

    def _flush(self, batch: Batch, source: Source | None) -> None:
        if any(batch.values()):
            # A span per batch (a root: batches are the channel's own clock, no request caused them), from its
            # first frame to its hand-over; a no-op without tracing.
            span = tracer.start_span("transcode batch", start_time=self.batch_started_ns or None, attributes={
                "veza.channel": self.channel, "veza.source": source.name if source else "silence",
                "veza.encode_seconds": round(self.batch_encode_seconds, 6),
                "veza.audio_seconds": max(sum(c.duration for c in v) for v in batch.values()) / SAMPLE_RATE,
                **{f"veza.bytes.{k}": sum(len(c.data) for c in v) for k, v in batch.items()}})
            self.deliver({k: list(v) for k, v in batch.items()}, source.title if source else "", self.on_air)
            span.end()
        self.batch_encode_seconds = 0.0
        for chunks in batch.values():
            chunks.clear()
