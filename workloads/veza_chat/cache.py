"""Recent events, L2: a Redis sorted set (score = seq) shared by the room's replicas.

L1 is each replica's in-process ring of delivered frames (room.py). L2 serves a
replica that has not seen a range itself (it just started) without a PostgreSQL
query. A range is only returned when it is complete and contiguous; anything
else (Redis down, evicted, a replica's write lost) falls through to PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from veza_core.breaker import CircuitBreaker

from .room import Encoded

SIZE = 4096
# How long committed frames wait for the next commits' before going to Redis together: a busy room's commits
# (one per message at a hundred messages a second) cost one pipeline per window, not a round trip each. A range
# not cached yet is read from PostgreSQL, as one evicted is.
LINGER = 0.05


class RecentCache:
    def __init__(self, redis: aioredis.Redis, key: str, breaker: CircuitBreaker | None = None) -> None:
        self.redis = redis
        self.key = key
        self.breaker = breaker or CircuitBreaker("chat-cache", errors=(RedisError, OSError))
        self.pending: list[Encoded] = []
        self.writer: asyncio.Task[None] | None = None

    def push(self, items: list[Encoded]) -> None:
        """Add `items` within LINGER, with whatever else was committed meanwhile (no wait for Redis here)."""
        self.pending.extend(items)
        if self.writer is None or self.writer.done():
            self.writer = asyncio.get_running_loop().create_task(self._write_soon(), name="chat-recent-cache")

    async def _write_soon(self) -> None:
        await asyncio.sleep(LINGER)
        while self.pending:
            items, self.pending = self.pending, []
            with contextlib.suppress(Exception):  # a cache write that fails is a miss later, nothing worse
                await self.add(items)

    def stop(self) -> None:
        if self.writer is not None:
            self.writer.cancel()

    async def add(self, items: list[Encoded]) -> None:
        async def op() -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zadd(self.key, {frame: seq for seq, frame, _ in items})
                pipe.zremrangebyrank(self.key, 0, -(SIZE + 1))
                await pipe.execute()

        async def skip() -> None:
            return None

        await self.breaker.call(op, skip)

    async def trim(self, floor: int) -> None:
        async def op() -> None:
            await self.redis.zremrangebyscore(self.key, "-inf", floor)

        async def skip() -> None:
            return None

        await self.breaker.call(op, skip)

    async def range(self, after: int, upto: int) -> list[tuple[int, str]] | None:
        """(seq, event frame) for seq in (after, upto], at most 1000, or None unless complete."""
        async def op() -> list[tuple[int, str]] | None:
            raw = await self.redis.zrangebyscore(self.key, f"({after}", upto, start=0, num=1000, withscores=True)
            pairs: list[tuple[bytes, float]] = list(raw)  # type: ignore[arg-type]  # withscores=True
            frames = [(int(score), member.decode()) for member, score in pairs]
            if not frames or frames[0][0] != after + 1 or frames[-1][0] != after + len(frames):
                return None
            return frames

        async def miss() -> list[tuple[int, str]] | None:
            return None

        return await self.breaker.call(op, miss)
