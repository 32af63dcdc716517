"""The leader's encoded audio to the other replicas over NATS, and back into a follower's channel.

The leader publishes every batch it encodes (in the wire format of :mod:`replication`);
every replica subscribes, and one that does not encode serves what it receives: only after checking it
(a forged or broken batch is dropped and counted in veza_bus_rejected_total{subject_kind="channel.audio"}):
bounded size and title, renditions of this channel, sane durations, and timestamps that follow the
timeline already served (docs/streaming.md, "Replicas and leadership").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from veza_core import bus

from .channel import Channel
from .pump import Batch
from .replication import WireError, decode_replicated, encode_batch
from .transcoder import Chunk

log = logging.getLogger(__name__)

KIND = "channel.audio"  # as counted in veza_bus_rejected_total
MAX_BATCH_BYTES = 4 * 1024 * 1024  # a batch is ~100 ms of every rendition (a few kB), headers included
MAX_TITLE = 1024
MAX_CHUNK_SAMPLES = 10 * 48000
MAX_PTS = 2**47  # ~93 years of samples at 48 kHz either way
# A batch whose timestamps are this far from the timeline served so far is not the leader's (it would cut HLS
# segments numbered from it); a timeline that holds for REANCHOR_AFTER seconds is a new one (a restarted channel).
PTS_WINDOW = 60 * 48000
REANCHOR_AFTER = 3.0


class Replicator:
    def __init__(self, channel: Channel, nc: Any, subject: str) -> None:
        self.channel = channel
        self.nc = nc
        self.subject = subject
        self._publishing: set[asyncio.Task[None]] = set()
        self.check = BatchCheck(set(channel.feeds))

    async def start(self) -> None:
        await self.nc.subscribe(self.subject, cb=self.received)
        self.channel.on_encoded.append(self.publish)

    def publish(self, batch: Batch, title: str) -> None:
        if not self.nc.is_connected:
            return
        # Every batch leads with each rendition's codec header (the channel received ours first), so a replica
        # that starts after the encoder can serve Ogg listeners and HLS init segments; receivers drop repeats.
        for rendition, chunks in batch.items():
            header = self.channel.headers.get(rendition)
            if header is not None and not (chunks and chunks[0].header):
                batch = {**batch, rendition: [Chunk(header, 0, 0, header=True), *chunks]}
        task = asyncio.create_task(self.nc.publish(self.subject, encode_batch(batch, title, self.channel.epoch)))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def received(self, msg: Any) -> None:
        if self.channel.encoding:
            self.check.next_pts = None  # the next leader goes on from our timeline: anchor anew after us
            return  # our own batches (or a stale leader's): we serve what we encode
        if len(msg.data) > MAX_BATCH_BYTES:
            bus.reject(KIND, "too_large", size=len(msg.data))
            return
        try:
            batch, title, epoch = decode_replicated(msg.data)
        except WireError as exc:
            bus.reject(KIND, "malformed", error=exc)
            return
        if (reason := self.check.refusal(batch, title)) is not None:
            bus.reject(KIND, reason)
            return
        self.channel.receive(batch, title, epoch=epoch)


class BatchCheck:
    """Whether a batch from the bus is one this replica may serve: None, or why not."""

    def __init__(self, renditions: set[str], *, clock: Callable[[], float] = time.monotonic) -> None:
        self.renditions = renditions
        self.clock = clock
        self.next_pts: int | None = None  # where the timeline served so far goes on
        self.disagreeing_since: float | None = None

    def refusal(self, batch: Batch, title: str) -> str | None:
        if len(title) > MAX_TITLE:
            return "title_too_long"
        if not set(batch) <= self.renditions:
            return "unknown_rendition"
        ends = []
        for chunks in batch.values():
            for chunk in chunks:
                if not (0 <= chunk.duration <= MAX_CHUNK_SAMPLES and -MAX_PTS < chunk.pts < MAX_PTS):
                    return "out_of_bounds"
                if not chunk.header:
                    ends.append(chunk.pts + chunk.duration)
        if not ends:
            return None
        end = max(ends)
        if self.next_pts is not None and abs(min(ends) - self.next_pts) > PTS_WINDOW:
            now = self.clock()
            if self.disagreeing_since is None:
                self.disagreeing_since = now
            if now - self.disagreeing_since < REANCHOR_AFTER:
                return "pts_out_of_window"
        self.disagreeing_since = None
        self.next_pts = end
        return None
