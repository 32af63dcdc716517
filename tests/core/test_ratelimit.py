"""Rate limits hold across clients through Redis, and fall back to process memory when Redis is down."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from veza_core.breaker import CircuitBreaker
from veza_core.ratelimit import BUCKET, GATED, Bucket, Decision, Leases, RateLimiter, ScriptPipeline, _Call
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


class CountedPipeline(ScriptPipeline):
    """Records how many calls each round trip carried."""

    def __init__(self, redis: aioredis.Redis) -> None:
        super().__init__(redis)
        self.sent: list[int] = []

    async def _send(self, calls: Sequence[_Call]) -> list[Any]:
        self.sent.append(len(calls))
        return await super()._send(calls)


@pytest.fixture
async def pipeline(redis: RedisService) -> AsyncIterator[CountedPipeline]:
    client = aioredis.from_url(redis.url)
    yield CountedPipeline(client)
    await client.aclose()


def take(burst: float) -> list[Any]:
    """BUCKET's arguments: one token from a bucket of `burst` refilled at 0.01 a second."""
    return [0.01, burst, 1, time.time()]


async def test_calls_of_one_turn_share_a_round_trip_each_caller_its_reply(pipeline: CountedPipeline) -> None:
    key, gate = f"t{uuid.uuid4().hex[:8]}:k", f"t{uuid.uuid4().hex[:8]}:gate"
    for script in (BUCKET, GATED):
        await pipeline.redis.script_load(script.text)  # known to Redis: no second pipeline for an unknown script
    await pipeline.redis.set(gate, b"go")
    replies = await asyncio.gather(
        *[pipeline(BUCKET, [key], take(3)) for _ in range(4)],
        pipeline(GATED, [f"{key}2", gate], [time.time(), 1, b"go", 0.01, 5, 1]),
        pipeline(BUCKET, [key], take(3)))
    assert pipeline.sent == [6], "one pipeline for the calls of one turn"
    # Redis ran them in call order: the bucket of 3 allowed the first three, whatever else was between.
    assert [r[0] for r in replies[:4]] + [replies[5][0]] == [1, 1, 1, 0, 0]
    assert replies[4][0] == b"go" and replies[4][1] == 1, "the gated script's own reply"


async def test_calls_made_while_a_pipeline_is_out_go_together_in_the_next(pipeline: CountedPipeline) -> None:
    key = f"t{uuid.uuid4().hex[:8]}:k"
    first = [pipeline(BUCKET, [key], take(5)) for _ in range(2)]
    await asyncio.sleep(0)  # the first pipeline leaves
    later = [pipeline(BUCKET, [key], take(5)) for _ in range(4)]
    replies = await asyncio.gather(*first, *later)
    assert pipeline.sent == [2, 4]
    assert [r[0] for r in replies] == [1, 1, 1, 1, 1, 0]


async def evalsha_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_takes_from_one_bucket_in_one_turn_are_one_script_with_each_callers_own_answer(
        redis: RedisService) -> None:
    """A sender with many messages in flight: its takes in one pipeline are one TAKES script, and each caller gets
    what its own take, run in call order, would have got."""
    client = aioredis.from_url(redis.url)
    limiter = RateLimiter(client, prefix=f"t{uuid.uuid4().hex[:8]}")
    try:
        await limiter.hit("warm", rate=1, burst=1)  # the pipeline's connection is open, the scripts loaded
        await limiter.hit("warm", rate=1, burst=1)
        before = await evalsha_calls(client)
        decisions = await asyncio.gather(*[limiter.hit("user:1", rate=0.01, burst=5) for _ in range(8)],
                                         limiter.hit("user:2", rate=0.01, burst=5))
        assert await evalsha_calls(client) - before == 2, "one script for user:1's eight takes, one for user:2's"
        assert [d.allowed for d in decisions[:8]] == [True] * 5 + [False] * 3
        assert [round(d.remaining) for d in decisions[:5]] == [4, 3, 2, 1, 0]
        assert all(90 < d.retry_after <= 100 for d in decisions[5:8]), "a token comes back in 100 s"
        assert decisions[8].allowed and round(decisions[8].remaining) == 4
        again = await limiter.hit("user:1", rate=0.01, burst=5)
        assert not again.allowed, "the merged takes took five tokens from the shared bucket"
    finally:
        await client.aclose()


async def test_takes_are_not_merged_past_another_script_on_their_key(pipeline: CountedPipeline) -> None:
    key, gate = f"t{uuid.uuid4().hex[:8]}:k", f"t{uuid.uuid4().hex[:8]}:gate"
    await pipeline.redis.set(gate, b"go")
    replies = await asyncio.gather(
        pipeline(BUCKET, [key], take(2)),
        pipeline(GATED, [key, gate], [time.time(), 0, b"go", 0.01, 2, 1]),  # the gate, then a take from `key`
        pipeline(BUCKET, [key], take(2)))
    assert [replies[0][0], replies[1][1], replies[2][0]] == [1, 1, 0], "Redis ran them in call order"


async def test_a_script_error_is_its_callers_alone(redis: RedisService) -> None:
    """One call failing inside the pipeline (its key holds a string): that caller gets the error and falls back
    to process memory, the calls before and after it in the same pipeline get Redis's answers."""
    client = aioredis.from_url(redis.url)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    limiter = RateLimiter(client, prefix=prefix)
    try:
        await client.set(f"{prefix}:broken", "not a bucket")
        pipeline = CountedPipeline(client)
        calls = [pipeline(BUCKET, [f"{prefix}:{k}"], take(3)) for k in ("ok", "broken", "ok")]
        replies = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(replies[1], ResponseError) and [replies[0][0], replies[2][0]] == [1, 1]
        assert pipeline.sent == [3]

        decisions = await asyncio.gather(*[limiter.hit(k, rate=0.01, burst=2) for k in ("a", "broken", "a", "a")])
        assert [d.allowed for d in decisions] == [True, True, True, False]
        assert set(limiter.local.buckets) == {f"{prefix}:broken"}, "the broken key's call alone fell back"
        assert await client.exists(f"{prefix}:a") == 1
        assert await client.get(f"{prefix}:broken") == b"not a bucket"
    finally:
        await client.aclose()


async def test_a_round_trip_lost_mid_pipeline_fails_its_calls_and_those_waiting(
    service_factory: Callable[[type[LocalService]], LocalService],
) -> None:
    """Redis dies with a pipeline out (its server paused, so the replies never come): every call it carried
    and every call waiting behind it falls back to process memory, each counted by the breaker, and the local
    bucket takes them in call order."""
    server = service_factory(RedisService)
    client = aioredis.from_url(server.url, socket_timeout=5, socket_connect_timeout=0.5)
    admin = aioredis.from_url(server.url)
    breaker = CircuitBreaker("t-mid", failure_threshold=100, errors=(RedisError, OSError))
    limiter = RateLimiter(client, prefix="t-mid", breaker=breaker)
    try:
        assert (await limiter.hit("warm", rate=1, burst=1)).allowed  # the pool holds a connection
        await admin.execute_command("CLIENT", "PAUSE", 10_000, "ALL")
        out = [asyncio.ensure_future(limiter.hit("k", rate=0.01, burst=4)) for _ in range(5)]
        await asyncio.sleep(0.3)  # that pipeline is sent; Redis holds it
        waiting = [asyncio.ensure_future(limiter.hit("k", rate=0.01, burst=4)) for _ in range(3)]
        await asyncio.sleep(0.1)
        assert not any(f.done() for f in out + waiting)
        server.kill()
        decisions = await asyncio.wait_for(asyncio.gather(*out, *waiting), timeout=10)
        assert [d.allowed for d in decisions] == [True] * 4 + [False] * 4
        assert breaker.failures == 8
    finally:
        await client.aclose()
        await admin.aclose()


async def test_scripts_redis_forgot_are_loaded_again(pipeline: CountedPipeline) -> None:
    key = f"t{uuid.uuid4().hex[:8]}:k"
    assert (await pipeline(BUCKET, [key], take(2)))[0] == 1
    await pipeline.redis.script_flush()
    replies = await asyncio.gather(*[pipeline(BUCKET, [key], take(2)) for _ in range(2)])
    assert [r[0] for r in replies] == [1, 0]
    assert pipeline.sent == [1, 2, 2], "the pipeline, then the calls Redis did not know, once loaded"


async def test_a_call_cancelled_before_it_is_sent_is_not_sent(pipeline: CountedPipeline) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    cancelled = pipeline(BUCKET, [f"{prefix}:gone"], take(2))
    kept = pipeline(BUCKET, [f"{prefix}:kept"], take(2))
    cancelled.cancel()
    assert (await kept)[0] == 1
    assert pipeline.sent == [1]
    assert await pipeline.redis.exists(f"{prefix}:gone") == 0
    with pytest.raises(asyncio.CancelledError):
        await cancelled



class CountedLimiter(RateLimiter):
    """Counts the takes that reach Redis."""

    trips = 0

    async def hit(self, key: str, **kwargs: Any) -> Decision:
        self.trips += 1
        return await super().hit(key, **kwargs)


async def _take_in_turns(redis: RedisService, takes: int, *, seconds: float, pause: float = 0.0
                         ) -> tuple[int, int, float]:
    """Two replicas (a limiter and a lease book each) taking in turn from one bucket of burst 100 that does not
    refill: (requests allowed, round trips to Redis, tokens left in Redis)."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    clients = [aioredis.from_url(redis.url), aioredis.from_url(redis.url)]
    limiters = [CountedLimiter(client, prefix=prefix) for client in clients]
    books = [Leases(seconds=seconds), Leases(seconds=seconds)]
    bucket = Bucket("ip:a", rate=0.0001, burst=100)
    allowed = 0
    try:
        for i in range(takes):
            allowed += (await limiters[i % 2].hit_leased(bucket, books[i % 2])).allowed
            if pause:
                await asyncio.sleep(pause)
        left = float(await clients[0].hget(f"{prefix}:{bucket.key}", "tokens") or 0)
    finally:
        for client in clients:
            await client.aclose()
    return allowed, sum(limiter.trips for limiter in limiters), left


async def test_leases_spare_round_trips_and_never_spend_more_than_the_bucket_gives(redis: RedisService) -> None:
    """A busy client on two replicas: most takes are served from the replicas' leases, and no more are allowed than
    the bucket holds, whatever each replica still holds unspent."""
    allowed, trips, _ = await _take_in_turns(redis, 80, seconds=30)
    assert allowed == 80
    assert trips <= 25, "leases of up to 10 tokens (a tenth of the burst): far fewer round trips than takes"
    allowed, trips, left = await _take_in_turns(redis, 300, seconds=30)
    assert 100 - 2 * 10 <= allowed <= 100, "never more than the burst; at most a lease per replica held back"
    assert left < 1


async def test_an_occasional_client_takes_from_the_bucket_only_what_it_spends(redis: RedisService) -> None:
    """One request now and then (its lease lapsed in between) takes one token each: nothing is lost to leases."""
    allowed, trips, left = await _take_in_turns(redis, 10, seconds=0.05, pause=0.1)
    assert (allowed, trips) == (10, 10)
    assert left == pytest.approx(90, abs=0.01)


async def test_a_take_of_no_tokens_reads_the_bucket_and_takes_nothing(redis: RedisService) -> None:
    """cost=0 reads what is left (the stream worker's check before a source password): leases never change that."""
    client = aioredis.from_url(redis.url)
    limiter = RateLimiter(client, prefix=f"t{uuid.uuid4().hex[:8]}")
    try:
        for _ in range(3):
            assert (await limiter.hit("ip:peek", rate=0.001, burst=2, cost=0)).remaining == pytest.approx(2, abs=0.01)
        assert (await limiter.hit("ip:peek", rate=0.001, burst=2)).remaining == pytest.approx(1, abs=0.01)
    finally:
        await client.aclose()
