"""What listeners see of the channel: admission under the listener limit (counted across replicas, see
:mod:`limits`), the ICY metadata interval, and the now-playing summary."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from veza_core.web import HttpError

from .channel import Channel
from .limits import ListenerCounter
from .metrics import LISTENERS_REJECTED
from .relay import RelayPuller


class Listeners:
    def __init__(self, channel: Channel, *, identity: str, metaint: int, relay: RelayPuller | None) -> None:
        self.channel = channel
        self.identity = identity
        self.metaint = metaint
        self.relay = relay
        self.counter: ListenerCounter | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        # At 0 from the start: a dashboard's rate() of it has a series (and counts the first refusal).
        LISTENERS_REJECTED.labels(channel.name, "listener_limit")

    def share_counts(self, redis: Redis, prefix: str) -> None:
        """Count listeners across replicas from now on, through the keys under `prefix`."""
        self.counter = ListenerCounter(redis, prefix, self.identity, self.channel.listener_count)
        self._heartbeat = asyncio.create_task(self.counter.run())

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(BaseException):
                await self._heartbeat

    async def clear(self) -> None:
        """Take this replica's count out of the shared total (at shutdown)."""
        if self.counter is not None:
            await self.counter.clear()

    def total(self) -> int:
        """Listeners across replicas (per replica without Redis or while it is unreachable)."""
        return self.counter.total() if self.counter is not None else self.channel.listener_count()

    def admit(self) -> None:
        """Room for one more listener, or HttpError 503 `listener_limit`."""
        limit = self.channel.spec.limits.max_listeners
        if limit is not None and self.total() >= limit:
            LISTENERS_REJECTED.labels(self.channel.name, "listener_limit").inc()
            raise HttpError(503, "listener_limit", "the channel has reached its listener limit", retry_after=5)

    def now_playing(self) -> dict[str, Any]:
        ch = self.channel
        return {"channel": ch.name, "title": ch.title, "since": ch.title_changed_at,
                "source": ch.on_air if ch.pump else None, "leader": ch.encoding,
                "listeners": {n: len(f.listeners) for n, f in ch.feeds.items()},
                "listenersTotal": self.total(),
                "renditions": [r.model_dump(by_alias=True) for r in ch.spec.renditions],
                "relay": self.relay.status() if self.relay is not None else None}


LISTENERS: web.AppKey[Listeners] = web.AppKey("stream_listeners", Listeners)
