"""The leader's encoded audio to the other replicas over NATS, and back into a follower's channel.

The leader publishes every batch it encodes (in the wire format of :mod:`replication`);
every replica subscribes, and one that does not encode serves what it receives.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .channel import Channel
from .pump import Batch
from .replication import WireError, decode_batch, encode_batch
from .transcoder import Chunk

log = logging.getLogger(__name__)


class Replicator:
    def __init__(self, channel: Channel, nc: Any, subject: str) -> None:
        self.channel = channel
        self.nc = nc
        self.subject = subject
        self._publishing: set[asyncio.Task[None]] = set()

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
        task = asyncio.create_task(self.nc.publish(self.subject, encode_batch(batch, title)))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def received(self, msg: Any) -> None:
        if self.channel.encoding:
            return  # our own batches (or a stale leader's): we serve what we encode
        try:
            batch, title = decode_batch(msg.data)
        except WireError as exc:
            log.warning("bad audio message", extra={"error": str(exc)})
            return
        self.channel.receive(batch, title)
