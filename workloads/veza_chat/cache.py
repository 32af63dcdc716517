"""Recent events, L2: a Redis sorted set (score = seq) shared by the room's replicas.

L1 is each replica's in-process ring of delivered frames (room.py). L2 serves a
replica that has not seen a range itself (it just started) without a PostgreSQL
query. A range is only returned when it is complete and contiguous; anything
else (Redis down, evicted, a replica's write lost) falls through to PostgreSQL.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from veza_core.breaker import CircuitBreaker

from .protocol import dumps

SIZE = 4096


class RecentCache:
    def __init__(self, redis: aioredis.Redis, key: str, breaker: CircuitBreaker | None = None) -> None:
        self.redis = redis
        self.key = key
        self.breaker = breaker or CircuitBreaker("chat-cache", errors=(RedisError, OSError))

    async def add(self, events: list[dict[str, Any]]) -> None:
        async def op() -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zadd(self.key, {dumps(ev): ev["seq"] for ev in events})
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

    async def range(self, after: int, upto: int) -> list[dict[str, Any]] | None:
        async def op() -> list[dict[str, Any]] | None:
            raw = await self.redis.zrangebyscore(self.key, f"({after}", upto, start=0, num=1000)
            events = [json.loads(r) for r in raw if isinstance(r, (bytes, str))]
            if not events or events[0]["seq"] != after + 1 or events[-1]["seq"] != after + len(events):
                return None
            return events

        async def miss() -> list[dict[str, Any]] | None:
            return None

        return await self.breaker.call(op, miss)
