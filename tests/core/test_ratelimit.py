"""Rate limits hold across clients through Redis, and fall back to process memory when Redis is down."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis.asyncio as aioredis

from veza_core.breaker import CircuitBreaker
from veza_core.ratelimit import RateLimiter
from veza_local.services import LocalService, RedisService


async def test_bucket_is_shared_between_limiters(redis: RedisService) -> None:
    a_client, b_client = aioredis.from_url(redis.url), aioredis.from_url(redis.url)
    a, b = RateLimiter(a_client, prefix="t1"), RateLimiter(b_client, prefix="t1")
    try:
        results = [await (a if i % 2 else b).hit("user:1", rate=0.5, burst=4) for i in range(6)]
        assert [r.allowed for r in results] == [True] * 4 + [False] * 2
        assert 1.0 < results[-1].retry_after <= 2.1
        assert (await a.hit("user:2", rate=0.5, burst=4)).allowed, "buckets are per key"
    finally:
        await a_client.aclose()
        await b_client.aclose()


async def test_falls_back_locally_when_redis_is_down_and_recovers(
    service_factory: Callable[[type[LocalService]], LocalService],
) -> None:
    server = service_factory(RedisService)
    client = aioredis.from_url(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    breaker = CircuitBreaker("t", failure_threshold=1, reset_after=0.2, errors=(OSError, Exception))
    limiter = RateLimiter(client, prefix="t2", breaker=breaker)
    try:
        assert (await limiter.hit("k", rate=100, burst=2)).allowed
        server.kill()
        decisions = [await limiter.hit("k", rate=0.01, burst=2) for _ in range(3)]
        assert [d.allowed for d in decisions] == [True, True, False], "the local bucket still limits"
        assert breaker.is_open
        server.start()
        await asyncio.sleep(0.3)
        assert (await limiter.hit("fresh", rate=1, burst=1)).allowed
        assert await client.exists("t2:fresh") == 1, "back on Redis once it returns"
        assert not breaker.is_open
    finally:
        await client.aclose()
