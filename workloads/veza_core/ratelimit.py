"""Token-bucket rate limits, shared across replicas through Redis.

The bucket lives in one Redis hash and is updated by one Lua script, so a
check-and-take is atomic however many workers hit it. When Redis is down the
circuit breaker sends checks to a bucket kept in this process: limits then hold
per replica instead of globally, which is the documented degraded mode.

`hit_gated` takes several buckets and reads one key in one script (one round trip instead of one per
bucket): the API's authenticated requests take the address's and the account's buckets and read the
session's cached state with it. One script over several keys needs them on one Redis (no Redis Cluster).

The scripts of concurrent callers (the requests a process serves at once) go to Redis together
(`ScriptPipeline`): one round trip, one connection from the pool and one wake-up for all of them, each caller
getting its own reply, or its own error to fall back on as it would alone.

A busy key need not ask Redis for most takes: `hit_leased` takes several tokens at once and spends the rest
from the process's memory (`Leases`), never more than the bucket gave.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from hiredis import pack_command
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, RedisError, ResponseError

from .breaker import CircuitBreaker

# The bucket KEYS[1] refilled to now: ARGV are rate (tokens/s), burst, cost, now (s, float) first in every script
# that takes from it; then, after the take, its new state stored (and kept until it would be full again).
_REFILL = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
"""
_STORE = """
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
"""

# One take. ARGV: rate, burst, cost, now, and optionally want: as many tokens as are there up to `want` (at least
# `cost`), for a caller that keeps the extra for its next requests (`Leases`).
# Returns {allowed (0/1), tokens left * 1000, retry after in ms, tokens taken}.
BUCKET_SCRIPT = _REFILL + """
local want = tonumber(ARGV[5]) or cost
local allowed = 0
local retry = 0
local taken = 0
if tokens >= cost then
  taken = math.max(cost, math.min(want, math.floor(tokens)))
  tokens = tokens - taken
  allowed = 1
else
  retry = (cost - tokens) / rate
end
""" + _STORE + """
return {allowed, math.floor(tokens * 1000), math.ceil(retry * 1000), taken}
"""

# `n` takes of `cost` at once, as Redis would run n BUCKET calls back to back: the first `granted` succeed, the rest
# are refused. ARGV: rate, burst, cost (> 0), now, n. Returns {granted, tokens before the takes * 1000, tokens left
# * 1000, retry after in ms for the refused}.
TAKES_SCRIPT = _REFILL + """
local n = tonumber(ARGV[5])
local before = tokens
local granted = 0
while granted < n and tokens >= cost do
  tokens = tokens - cost
  granted = granted + 1
end
""" + _STORE + """
return {granted, math.floor(before * 1000), math.floor(tokens * 1000), math.ceil((cost - tokens) / rate * 1000)}
"""

# Several buckets and one read in one round trip: the buckets before the gate are taken in order (stopping at the
# first refusal); then the gate key is read; the buckets after it are taken only if it holds the value that lets
# requests through. Each take is BUCKET_SCRIPT itself, as a function (its KEYS and ARGV are the parameters).
# KEYS: the buckets, then the gate. ARGV: now, buckets before the gate, the gate's passing value, then rate,
# burst, cost, want per bucket. Returns {gate value or false, then allowed, tokens left * 1000, retry ms, tokens taken
# per bucket taken}.
GATED_SCRIPT = "local function take(KEYS, ARGV)\n" + BUCKET_SCRIPT + """end
local now = ARGV[1]
local before = tonumber(ARGV[2])
local out = {false}
for i = 1, #KEYS - 1 do
  if i == before + 1 then
    out[1] = redis.call('GET', KEYS[#KEYS])
    if out[1] ~= ARGV[3] then return out end
  end
  local at = 4 + (i - 1) * 4
  local decision = take({KEYS[i]}, {ARGV[at], ARGV[at + 1], ARGV[at + 2], now, ARGV[at + 3]})
  for _, value in ipairs(decision) do out[#out + 1] = value end
  if decision[1] == 0 then return out end
end
if before == #KEYS - 1 then out[1] = redis.call('GET', KEYS[#KEYS]) end
return out
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    remaining: float
    retry_after: float  # seconds until `cost` tokens are available again
    taken: float = 0.0  # tokens taken from the bucket: `cost`, or more when more were wanted (`Bucket.want`)


@dataclass(frozen=True)
class Bucket:
    key: str
    rate: float
    burst: float
    cost: float = 1.0
    want: float | None = None  # tokens to take when there are that many (None: `cost`): the extra goes to `Leases`


@dataclass(frozen=True)
class Gated:
    """What `RateLimiter.hit_gated` did: the decisions of the buckets taken, in order (it stops at the first
    refusal, and at the gate unless the gate let it through), and the gate's value (None: missing, or not read)."""

    decisions: list[Decision]
    gate: bytes | None
    # False when the gate was not asked: Redis unreachable (the buckets before it were taken in process memory)
    # or a bucket before it refused.
    gate_read: bool


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
            decision = Decision(True, tokens, 0.0, cost)
        else:
            decision = Decision(False, tokens, (cost - tokens) / rate)
        if len(self.buckets) >= self.max_keys and key not in self.buckets:
            self.buckets.pop(next(iter(self.buckets)))  # oldest first: dicts keep insertion order
        self.buckets[key] = (tokens, now)
        return decision


@dataclass
class _Lease:
    left: float  # tokens taken from the shared bucket and not yet spent
    until: float  # monotonic time after which they are dropped
    size: float  # tokens the last lease asked for


class Leases:
    """Tokens taken from shared buckets ahead of their use, spent by this process without asking Redis.

    A key that keeps coming back takes more than one token per round trip (`want`), and spends the rest from here:
    one round trip serves many requests of a busy client, where each cost one. The tokens are taken out of the
    shared bucket, so no replica ever spends more than the bucket gave: across replicas a client never gets more
    than the limit's rate over time. What a lease changes: tokens a replica holds and does not spend within
    `seconds` are dropped (gone from the bucket as if spent), and tokens held while the bucket refills add to its
    burst, by at most one lease per replica. Both stay small: a lease is at most `share` of the bucket's burst
    (and `most`), and a key starts at one token and doubles its lease only while it spends each one before it
    lapses, so an occasional client (one request now and then, on any replica) takes exactly what it spends.
    """

    def __init__(self, *, seconds: float = 0.5, share: float = 0.1, most: float = 64, max_keys: int = 100_000) -> None:
        self.seconds = seconds
        self.share = share
        self.most = most
        self.max_keys = max_keys
        self._leases: dict[str, _Lease] = {}

    def spend(self, bucket: Bucket) -> bool:
        """Spend `bucket.cost` tokens leased earlier, if this process holds that many still valid."""
        lease = self._leases.get(bucket.key)
        if lease is None or lease.left < bucket.cost or time.monotonic() >= lease.until:
            return False
        lease.left -= bucket.cost
        return True

    def ask(self, bucket: Bucket) -> Bucket:
        """`bucket` wanting the next lease's tokens: twice the last if it was all spent in time, else its cost."""
        lease = self._leases.get(bucket.key)
        most = max(bucket.cost, min(self.most, float(int(bucket.burst * self.share))))
        hot = lease is not None and lease.left < bucket.cost and time.monotonic() < lease.until
        want = min(most, lease.size * 2) if hot and lease is not None else bucket.cost
        return Bucket(bucket.key, bucket.rate, bucket.burst, bucket.cost, want)

    def keep(self, bucket: Bucket, decision: Decision) -> None:
        """Keep what `decision` took beyond the cost of the request it answered."""
        if not decision.allowed:
            return
        now = time.monotonic()
        lease = self._leases.get(bucket.key)
        held = lease.left if lease is not None and now < lease.until else 0.0
        if lease is None and len(self._leases) >= self.max_keys:
            self._leases.pop(next(iter(self._leases)))  # oldest first
        self._leases[bucket.key] = _Lease(held + decision.taken - bucket.cost, now + self.seconds,
                                          _wanted(bucket.cost, bucket.want))


def _wanted(cost: float, want: float | None) -> float:
    """What a take asks for: `cost` (a cost of 0 reads the bucket and takes nothing), or more for a lease."""
    return cost if want is None else max(cost, want)


class Script:
    """A Lua script and the SHA-1 Redis knows it by (EVALSHA sends the digest, not the text)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()  # noqa: S324 (Redis's name for it, not a security use)


@dataclass(frozen=True)
class _Call:
    script: Script
    keys: Sequence[str]
    args: Sequence[Any]
    reply: asyncio.Future[Any]


class ScriptPipeline:
    """Sends the scripts of concurrent callers to Redis in pipelines (EVALSHA each, in call order), one pipeline in
    flight at a time: the calls made while one is out go together in the next, as soon as it is back. One round
    trip, one connection and one wake-up then serve all the requests being handled at once, where each call cost
    its own (~70 µs of client CPU). A lone call waits for nothing but the end of the current loop turn.

    Each caller gets its own reply, or its own error: a script's error reply is its caller's alone; a round trip
    that failed (timeout, connection lost, after the client's retries) fails every call it carried and the calls
    waiting for it, and each caller then does what it would have done alone (`RateLimiter`'s breaker counts each
    call, and each falls back to process memory). A call whose caller was cancelled before it was sent is not
    sent. Scripts Redis does not hold (a restart, SCRIPT FLUSH) are loaded and their calls sent again."""

    def __init__(self, redis: aioredis.Redis, *, max_calls: int = 256) -> None:
        self.redis = redis
        self.max_calls = max_calls  # per pipeline (Redis runs a pipeline's scripts one after the other)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._calls: list[_Call] = []
        self._due = False  # a flush is scheduled
        self._flight: asyncio.Future[None] | None = None  # the pipeline out, if any
        self._connection: AbstractConnection | None = None

    def __call__(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests run one per test): what the old one left will never land
            self._loop, self._calls, self._due, self._flight, self._connection = loop, [], False, None, None
        reply: asyncio.Future[Any] = loop.create_future()
        self._calls.append(_Call(script, keys, args, reply))
        if not self._due and self._flight is None:
            self._due = True
            loop.call_soon(self._flush)  # after the callbacks already due: the requests that arrived with this one
        return reply

    def _flush(self) -> None:
        self._due = False
        waiting = [c for c in self._calls if not c.reply.done()]
        calls, self._calls = waiting[:self.max_calls], waiting[self.max_calls:]
        if calls:
            self._flight = asyncio.ensure_future(self._run(calls))
            self._flight.add_done_callback(self._landed)

    def _landed(self, flight: asyncio.Future[None]) -> None:
        if flight is self._flight:
            self._flight = None
            if self._calls:
                self._flush()

    async def _run(self, calls: list[_Call]) -> None:
        try:
            replies = await self._send(calls)
            unknown = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if unknown:
                # (a merged take's script is TAKES: load it with BUCKET)
                texts = {text for i in unknown for text in (calls[i].script.text, TAKES.text)
                         if calls[i].script is BUCKET or text != TAKES.text}
                for reply in await self._round_trip([("SCRIPT", "LOAD", text) for text in texts]):
                    if isinstance(reply, Exception):
                        raise reply
                for i, reply in zip(unknown, await self._send([calls[i] for i in unknown]), strict=True):
                    replies[i] = reply
        except BaseException as exc:
            # The calls that waited for this round trip would wait for another through the same outage.
            failed, self._calls = [*calls, *self._calls], []
            for call in failed:
                if call.reply.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    call.reply.cancel()
                else:
                    call.reply.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for call, reply in zip(calls, replies, strict=True):
            if call.reply.done():
                continue
            if isinstance(reply, Exception):
                call.reply.set_exception(reply)
            else:
                call.reply.set_result(reply)

    async def _send(self, calls: Sequence[_Call]) -> list[Any]:
        """The calls' replies. Takes of one token cost from one bucket go as one TAKES call: a sender with many
        messages in flight costs one script per round trip, not one per message, and each caller gets the reply
        its own BUCKET call would have had, in call order. Merged only when no other call of the pipeline touches
        that bucket, so Redis runs what touches a key in call order."""
        groups: dict[tuple[Any, ...], list[int]] = {}
        others: set[str] = set()
        for i, call in enumerate(calls):
            if call.script is BUCKET and _single_take(call.args):
                groups.setdefault((call.keys[0], *call.args[:3]), []).append(i)
            else:
                others.update(call.keys)
        merged = {members[0]: (group, members) for group, members in groups.items()
                  if len(members) > 1 and group[0] not in others}
        skip = {i for _, members in merged.values() for i in members[1:]}
        commands = []
        for i, call in enumerate(calls):
            if i in merged:
                (key, *params), members = merged[i]
                now = max(calls[m].args[3] for m in members)
                commands.append(("EVALSHA", TAKES.sha, 1, key, *params, now, len(members)))
            elif i not in skip:
                commands.append(("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args))
        replies: list[Any] = [None] * len(calls)
        for i, reply in zip((i for i in range(len(calls)) if i not in skip), await self._round_trip(commands),
                            strict=True):
            if i not in merged:
                replies[i] = reply
                continue
            (_, _, _, cost), members = merged[i]
            for n, m in enumerate(members):
                replies[m] = reply if isinstance(reply, Exception) else _nth_take(reply, n, cost)
        return replies

    async def _round_trip(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The commands' replies (an error reply as its exception), in one round trip on the connection this
        pipeline keeps: one pipeline is in flight at a time, so it is never shared. hiredis packs them; redis-py's
        pipeline packed each argument in Python and took a connection from the pool and gave it back, more client
        CPU than the replies."""
        if self._connection is None:
            self._connection = await self.redis.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        connection = self._connection
        packed = b"".join([pack_command(command) for command in commands])

        async def exchange() -> list[Any]:
            try:
                await connection.send_packed_command(packed, check_health=False)
                replies: list[Any] = []
                for _ in commands:
                    try:
                        replies.append(await connection.read_response())
                    except ResponseError as exc:
                        replies.append(exc)
                return replies
            except BaseException:
                await connection.disconnect(nowait=True)  # replies may be left unread on it
                raise

        async def failed(_: Exception) -> None:
            await connection.disconnect()

        # A connection found closed (Redis restarted) is opened again and the commands sent again, as the client's
        # retry policy says.
        return await connection.retry.call_with_retry(exchange, failed)


BUCKET = Script(BUCKET_SCRIPT)
TAKES = Script(TAKES_SCRIPT)
GATED = Script(GATED_SCRIPT)


def _single_take(args: Sequence[Any]) -> bool:
    """BUCKET arguments (rate, burst, cost, now[, want]) taking just `cost` (> 0): what TAKES can merge."""
    return args[2] > 0 and (len(args) == 4 or args[4] == args[2])


def _nth_take(reply: list[int], n: int, cost: float) -> list[int]:
    """What the `n`-th (from 0) of the takes a TAKES call merged would have got from BUCKET."""
    granted, before, left, retry = reply
    if n < granted:
        return [1, math.floor((before / 1000 - (n + 1) * cost) * 1000), 0, int(cost)]
    return [0, left, retry, 0]


class RateLimiter:
    def __init__(self, redis: aioredis.Redis | None, *, prefix: str, breaker: CircuitBreaker | None = None,
                 scripts: ScriptPipeline | None = None) -> None:
        """`scripts`: the pipeline to send through, shared by the limiters of one process (the chat worker's rooms)
        so that they batch together and keep one Redis connection between them; by default one of its own."""
        self.redis = redis
        self.prefix = prefix
        self.breaker = breaker or CircuitBreaker(f"ratelimit:{prefix}", errors=(RedisError, OSError))
        self.local = _LocalBuckets()
        self._scripts = scripts or (ScriptPipeline(redis) if redis is not None else None)

    async def hit(self, key: str, *, rate: float, burst: float, cost: float = 1.0, want: float | None = None
                  ) -> Decision:
        """Take `cost` tokens from the bucket `key` refilled at `rate` per second up to `burst` (up to `want` when
        there are that many: `Leases`)."""
        full_key = f"{self.prefix}:{key}"

        async def local() -> Decision:
            return self.local.take(full_key, rate, burst, cost)

        if self._scripts is None:
            return await local()
        scripts = self._scripts

        async def remote() -> Decision:
            allowed, left, retry_ms, taken = await scripts(BUCKET, [full_key],
                                                           [rate, burst, cost, time.time(), _wanted(cost, want)])
            return Decision(bool(allowed), left / 1000, retry_ms / 1000, taken)

        return await self.breaker.call(remote, local)

    async def hit_leased(self, bucket: Bucket, leases: Leases) -> Decision:
        """`bucket.cost` tokens from this process's lease of `bucket` when it holds them, else from the bucket with
        the next lease (`Leases`)."""
        if leases.spend(bucket):
            return Decision(True, 0.0, 0.0, bucket.cost)  # what the bucket holds is not known here
        bucket = leases.ask(bucket)
        decision = await self.hit(bucket.key, rate=bucket.rate, burst=bucket.burst, cost=bucket.cost,
                                  want=bucket.want)
        leases.keep(bucket, decision)
        return decision

    async def hit_gated(self, before: Sequence[Bucket], gate: str, passing: bytes, after: Sequence[Bucket]) -> Gated:
        """Take `before`, read the key `gate` (a full key, not under this limiter's prefix), and take `after` only
        if `gate` holds `passing`: one round trip for what would be several. When Redis is unreachable the buckets
        before the gate are taken in process memory and the gate is left unread (the caller decides, then takes
        `after` with `hit`)."""
        buckets = [*before, *after]

        async def local() -> Gated:
            decisions: list[Decision] = []
            for b in before:
                decisions.append(self.local.take(f"{self.prefix}:{b.key}", b.rate, b.burst, b.cost))
                if not decisions[-1].allowed:
                    break
            return Gated(decisions, None, False)

        if self._scripts is None:
            return await local()
        scripts = self._scripts

        async def remote() -> Gated:
            args: list[float | str | bytes] = [time.time(), len(before), passing]
            for b in buckets:
                args += [b.rate, b.burst, b.cost, _wanted(b.cost, b.want)]
            out = await scripts(GATED, [*(f"{self.prefix}:{b.key}" for b in buckets), gate], args)
            flat = out[1:]
            decisions = [Decision(bool(flat[i]), flat[i + 1] / 1000, flat[i + 2] / 1000, flat[i + 3])
                         for i in range(0, len(flat), 4)]
            read = all(d.allowed for d in decisions[:len(before)]) and len(decisions) >= len(before)
            return Gated(decisions, out[0] or None, read)

        return await self.breaker.call(remote, local)
