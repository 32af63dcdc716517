"""What the platform learns about the channel from its worker: the channel in the directory (the API lists
it), now-playing in Redis (the hash the API reads, docs/api.md) and on NATS, listener counts on NATS
(payloads: `veza_core.events`, docs/events.md).

Titles are announced by the replica that encodes only; listener counts by every replica. Now-playing goes through
JetStream (the platform's channel stream, `Nats-Msg-Id` = the event's id), so a consumer that was away catches up;
listener counts are snapshots on core NATS, which the platform's stats stream keeps for analytics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from redis.asyncio import Redis

from veza_core import directory, events

from .channel import Channel

log = logging.getLogger(__name__)


class Announcer:
    def __init__(self, channel: Channel, *, identity: str) -> None:
        self.channel = channel
        self.identity = identity
        self._tasks: list[asyncio.Task[None]] = []
        self._publishing: set[asyncio.Task[None]] = set()

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    def on_nats(self, nc: Any, *, platform: str) -> None:
        """Titles to the channel's now-playing subject through JetStream (while encoding), listener counts to its
        listeners subject every 5 s."""
        name = self.channel.name
        titles = events.CHANNEL_NOWPLAYING.subject(platform, name)

        def publish_title(title: str) -> None:
            if not self.channel.encoding:
                return
            started_at = self.channel.title_changed_at
            event = events.NowPlaying(v=1, id=f"{name}:{round(started_at * 1000)}", channel=name, title=title,
                                      started_at=started_at, at=time.time())
            self._spawn(self._publish_now_playing(nc, platform, titles, event))

        self.channel.on_title.append(publish_title)
        self._tasks.append(asyncio.create_task(
            self._publish_listeners(nc, platform, events.CHANNEL_LISTENERS.subject(platform, name))))

    async def _publish_now_playing(self, nc: Any, platform: str, subject: str, event: events.NowPlaying) -> None:
        """Publish until the stream acknowledges it (a retry after a lost ack is deduplicated by the id), for a
        minute at most: a title that old is no longer news."""
        js = nc.jetstream()
        for attempt in range(30):
            try:
                if attempt:
                    await events.ensure_channels_stream(js, platform)  # NATS lost it, or nobody made it yet
                await js.publish(subject, events.payload(event), timeout=2.0, headers={"Nats-Msg-Id": event.id})
                return
            except Exception as exc:  # NATS away, the stream missing: retry
                log.info("now-playing not published yet", extra={"attempt": attempt, "error": repr(exc)})
                await asyncio.sleep(min(2.0, 0.2 * (attempt + 1)))

    def on_redis(self, redis: Redis, key: str) -> None:
        """Titles to the now-playing hash at `key` (while encoding)."""

        def store_title(title: str) -> None:
            if not self.channel.encoding:
                return

            async def store() -> None:
                with contextlib.suppress(Exception):  # Redis down: the worker's own /now-playing still answers
                    async with redis.pipeline(transaction=True) as pipe:
                        pipe.hset(key, mapping={"title": title, "started_at": str(self.channel.title_changed_at),
                                                "channel": self.channel.name})
                        pipe.expire(key, 86400)
                        await pipe.execute()

            self._spawn(store())

        self.channel.on_title.append(store_title)

    def in_directory(self, database_url: str, title: str, visibility: str) -> None:
        """Declare the channel in the platform's directory, retrying in the background until it works."""
        self._tasks.append(asyncio.create_task(self._declare(database_url, title, visibility)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task

    async def _publish_listeners(self, nc: Any, platform: str, subject: str) -> None:
        """Core NATS publishes, kept by the platform's stats stream for the analytics consumer (made here too, so
        counts are kept while no API is up)."""
        stream_ready = False
        while True:
            await asyncio.sleep(5)
            if nc.is_connected:
                if not stream_ready:
                    with contextlib.suppress(Exception):  # next time, then; the live counts do not wait for it
                        stream_ready = bool(await events.ensure_stats_stream(nc.jetstream(), platform))
                counts = events.ListenerCounts(
                    v=1, channel=self.channel.name, replica=self.identity,
                    listeners={n: len(f.listeners) for n, f in self.channel.feeds.items()}, at=time.time())
                with contextlib.suppress(Exception):
                    await nc.publish(subject, events.payload(counts))

    async def _declare(self, database_url: str, title: str, visibility: str) -> None:
        import asyncpg

        for attempt in range(60):
            try:
                conn = await asyncpg.connect(database_url, timeout=5)
                try:
                    await directory.declare(conn, "channel", self.channel.name, title, visibility)
                finally:
                    await conn.close()
                return
            except Exception as exc:  # the database may come up after us, or not have the tables yet
                log.info("channel not declared yet", extra={"attempt": attempt, "error": repr(exc)})
                await asyncio.sleep(min(30.0, 1.0 + attempt))
