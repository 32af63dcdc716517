"""Token-bucket rate limits, shared across replicas through Redis.

The bucket lives in one Redis hash and is updated by one Lua script, so a
check-and-take is atomic however many workers hit it. When Redis is down the
circuit breaker sends checks to a bucket kept in this process: limits then hold
per replica instead of globally, which is the documented degraded mode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .breaker import CircuitBreaker

# KEYS[1]: bucket; ARGV: rate (tokens/s), burst, cost, now (s, float).
# Returns {allowed (0/1), tokens left * 1000, retry after in ms}.
BUCKET_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local retry = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  retry = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return {allowed, math.floor(tokens * 1000), math.ceil(retry * 1000)}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    remaining: float
    retry_after: float  # seconds until `cost` tokens are available again


class _LocalBuckets:
    """The same algorithm in process memory (the fallback)."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self.buckets: dict[str, tuple[float, float]] = {}
        self.max_keys = max_keys

    def take(self, key: str, rate: float, burst: float, cost: float) -> Decision:
        now = time.monotonic()
        tokens, ts = self.buckets.get(key, (burst, now))
        tokens = min(burst, tokens + (now - ts) * rate)
        if tokens >= cost:
            tokens -= cost
            decision = Decision(True, tokens, 0.0)
        else:
            decision = Decision(False, tokens, (cost - tokens) / rate)
        if len(self.buckets) >= self.max_keys and key not in self.buckets:
            self.buckets.pop(next(iter(self.buckets)))  # oldest first: dicts keep insertion order
        self.buckets[key] = (tokens, now)
        return decision


class RateLimiter:
    def __init__(self, redis: aioredis.Redis | None, *, prefix: str, breaker: CircuitBreaker | None = None) -> None:
        self.redis = redis
        self.prefix = prefix
        self.breaker = breaker or CircuitBreaker(f"ratelimit:{prefix}", errors=(RedisError, OSError))
        self.local = _LocalBuckets()
        self._script = redis.register_script(BUCKET_SCRIPT) if redis is not None else None

    async def hit(self, key: str, *, rate: float, burst: float, cost: float = 1.0) -> Decision:
        """Take `cost` tokens from the bucket `key` refilled at `rate` per second up to `burst`."""
        full_key = f"{self.prefix}:{key}"

        async def local() -> Decision:
            return self.local.take(full_key, rate, burst, cost)

        if self._script is None:
            return await local()

        async def remote() -> Decision:
            assert self._script is not None
            allowed, left, retry_ms = await self._script(keys=[full_key], args=[rate, burst, cost, time.time()])
            return Decision(bool(allowed), left / 1000, retry_ms / 1000)

        return await self.breaker.call(remote, local)
