"""One StreamChannel inside a worker: its sources, encoder, rendition feeds and HLS segmenters.

Only the leader replica encodes (:meth:`Channel.start_encoding`); every replica,
leader included, serves listeners from the same feeds, which the leader fills from
its encoder and followers fill from what the leader publishes (:mod:`replication`).

Stream time (docs/streaming.md, "Stream position"): the Unix time at which the encoder produced a
piece of audio, ``epoch + pts / SAMPLE_RATE``. The encoding replica sets the epoch when its output
drifts from its clock by more than ``EPOCH_DRIFT`` (at its first batch, after a stalled source) and
sends it with every batch, so all replicas stamp the same audio with the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .hls import HLS_CODECS, Segment, Segmenter
from .metrics import HLS_SEGMENTS
from .pump import Batch, Pump, Source
from .renditions import RenditionFeed
from .settings import WRITE_INTERVAL
from .sources import PlaylistSource, PushedSource, TrackFetcher
from .spec import ChannelSpec
from .transcoder import CONTENT_TYPES, SAMPLE_RATE, Transcoder

log = logging.getLogger(__name__)

# How far stream time may run from the encoder's clock before it is re-anchored: more than the encoder's lead
# over real time (up to 2 s for pushed sources), so steady encoding never moves it.
EPOCH_DRIFT = 3.0


class Channel:
    def __init__(self, name: str, spec: ChannelSpec, fetch: TrackFetcher, *, burst_seconds: float = 2.0,
                 max_listener_buffer: int = 256 * 1024, write_interval: float = WRITE_INTERVAL,
                 hls_part_seconds: float = 0.0, prefer_system_codecs: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.clock = clock  # Unix seconds: stream time
        self.epoch: float | None = None  # stream time of pts 0
        self.spec = spec
        self.fetch = fetch
        self.prefer_system_codecs = prefer_system_codecs
        self.feeds = {r.name: RenditionFeed(name, r.name, CONTENT_TYPES[r.codec], burst_seconds=burst_seconds,
                                            max_buffer=max_listener_buffer, write_interval=write_interval)
                      for r in spec.renditions}
        self.segmenters: dict[str, Segmenter] = {}
        if spec.delivery.hls.enabled:
            for r in spec.renditions:
                if r.codec in HLS_CODECS:
                    target = spec.delivery.hls.target_duration_seconds
                    part = spec.delivery.hls.part_duration_seconds or hls_part_seconds
                    segmenter = Segmenter(r.codec, target,
                                          on_segment=lambda segment, n=r.name: self._segment_cut(n, segment),  # type: ignore[misc]
                                          part_seconds=part if 0 < part <= target / 2 else None,
                                          stream_time=self.stream_time)
                    self.segmenters[r.name] = segmenter
                    self.feeds[r.name].sinks.append(segmenter.feed)
        source = spec.source
        self.live = PushedSource("live") if source.type == "live" else None
        self.relay = PushedSource("relay") if source.type == "relay" else None
        self.playlist = PlaylistSource(source.playlist.tracks, fetch, shuffle=source.playlist.shuffle) \
            if source.type == "playlist" else None
        fb = source.fallback.playlist
        self.fallback = PlaylistSource(fb.tracks, fetch, shuffle=fb.shuffle, name="fallback") if fb.tracks else None
        self.headers: dict[str, bytes] = {}  # the codec header of each rendition's current stream
        self.title = ""
        self.on_air = "silence"  # the source of the audio last encoded here (the leader's)
        self.title_changed_at = time.time()
        self.pump: Pump | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # Called on the event loop with every batch this replica encodes (the replication publisher).
        self.on_encoded: list[Callable[[Batch, str], Any]] = []
        self.on_title: list[Callable[[str], Any]] = []
        # Called with every HLS segment cut while this replica encodes (the recorder).
        self.on_segment: list[Callable[[str, Segment], Any]] = []

    @property
    def sources(self) -> list[Source]:
        return [s for s in (self.live, self.relay, self.playlist, self.fallback) if s is not None]

    @property
    def encoding(self) -> bool:
        return self.pump is not None and self.pump.is_alive()

    def last_pts(self) -> int:
        return max((f.last_pts for f in self.feeds.values()), default=0)

    def start_encoding(self) -> None:
        """Become the encoder, continuing the timeline where the stream we served so far ended."""
        if self.encoding:
            return
        self.loop = asyncio.get_running_loop()
        transcoder = Transcoder(self.spec.renditions, self.last_pts(), prefer_system_codecs=self.prefer_system_codecs)
        self.pump = Pump(self.name, transcoder, self.sources, self._from_pump)
        self.pump.start()
        log.info("encoding started", extra={"channel": self.name, "pts": self.last_pts()})

    async def stop_encoding(self) -> None:
        if self.pump is None:
            return
        self.pump.stop()
        await asyncio.to_thread(self.pump.join, 5)
        self.pump = None
        log.info("encoding stopped", extra={"channel": self.name})

    def _segment_cut(self, rendition: str, segment: Segment) -> None:
        HLS_SEGMENTS.labels(self.name, rendition).inc()
        if self.encoding:
            for hook in self.on_segment:
                hook(rendition, segment)

    def _from_pump(self, batch: Batch, title: str, source: str) -> None:
        assert self.loop is not None
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            self.loop.call_soon_threadsafe(self._encoded, batch, title, source)

    def stream_time(self, pts: int) -> float | None:
        """When the encoder produced the sample at `pts` (Unix seconds), once known."""
        return None if self.epoch is None else self.epoch + pts / SAMPLE_RATE

    def _anchor(self, batch: Batch) -> None:
        """Keep stream time on the clock of whoever stamps it: re-anchored only when it drifted away."""
        ends = [c.pts + c.duration for chunks in batch.values() for c in chunks if not c.header]
        if not ends:
            return
        end, now = max(ends), self.clock()
        if self.epoch is None or abs(self.epoch + end / SAMPLE_RATE - now) > EPOCH_DRIFT:
            self.epoch = now - end / SAMPLE_RATE

    def _encoded(self, batch: Batch, title: str, source: str) -> None:
        # Taken with the batch, not from the pump as it switches: what now-playing says is on air is what is served,
        # with that audio's title (a source goes on air a batch before its audio and title reach the listeners).
        self.on_air = source
        self._anchor(batch)
        self.receive(batch, title)
        for hook in self.on_encoded:
            hook(batch, title)

    def receive(self, batch: Batch, title: str, *, epoch: float | None = None) -> None:
        """Serve a batch of encoded chunks (ours or the leader's, with its stream-time epoch when it sent one) to
        every listener of this replica."""
        if epoch is not None:
            self.epoch = epoch
        elif not self.encoding:
            self._anchor(batch)  # a leader that sends no epoch: stamp by arrival
        if title and title != self.title:
            self.title = title
            self.title_changed_at = time.time()
            for feed in self.feeds.values():
                feed.set_title(title)
            for hook in self.on_title:
                hook(title)
        for rendition, chunks in batch.items():
            if (target := self.feeds.get(rendition)) is None:
                continue
            if chunks and chunks[0].header:
                if chunks[0].data == self.headers.get(rendition):
                    chunks = chunks[1:]  # the leader repeats its header in every batch: same stream, go on
                else:
                    self.headers[rendition] = chunks[0].data  # a new encoder's stream (or our first sight of it)
            target.publish(chunks)

    def listener_count(self) -> int:
        return sum(len(f.listeners) for f in self.feeds.values())

    async def close(self) -> None:
        await self.stop_encoding()
        for source in self.sources:
            source.close()
        for feed in self.feeds.values():
            feed.close_all("shutdown")


CHANNEL: web.AppKey[Channel] = web.AppKey("stream_channel", Channel)
