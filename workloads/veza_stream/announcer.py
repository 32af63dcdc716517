"""What the platform learns about the channel from its worker: the channel in the directory (the API lists
it), now-playing in Redis (the hash the API reads, docs/api.md) and on NATS, listener counts on NATS.

Titles are announced by the replica that encodes only; listener counts by every replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from redis.asyncio import Redis

from veza_core import directory

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

    def on_nats(self, nc: Any, *, titles: str, listeners: str) -> None:
        """Titles to subject `titles` (while encoding), listener counts to subject `listeners` every 5 s."""

        def publish_title(title: str) -> None:
            if not self.channel.encoding:
                return
            body = json.dumps({"channel": self.channel.name, "title": title, "at": time.time()}).encode()
            self._spawn(nc.publish(titles, body))

        self.channel.on_title.append(publish_title)
        self._tasks.append(asyncio.create_task(self._publish_listeners(nc, listeners)))

    def on_redis(self, redis: Redis, key: str) -> None:
        """Titles to the now-playing hash at `key` (while encoding)."""

        def store_title(title: str) -> None:
            if not self.channel.encoding:
                return

            async def store() -> None:
                with contextlib.suppress(Exception):  # Redis down: the worker's own /now-playing still answers
                    async with redis.pipeline(transaction=True) as pipe:
                        pipe.hset(key, mapping={"title": title, "started_at": str(time.time()),
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

    async def _publish_listeners(self, nc: Any, subject: str) -> None:
        while True:
            await asyncio.sleep(5)
            if nc.is_connected:
                counts = {n: len(f.listeners) for n, f in self.channel.feeds.items()}
                body = {"channel": self.channel.name, "replica": self.identity, "listeners": counts, "at": time.time()}
                with contextlib.suppress(Exception):
                    await nc.publish(subject, json.dumps(body).encode())

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
