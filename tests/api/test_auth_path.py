"""The authenticated request path: one Redis round trip for the address's bucket, the session's state and the
account's bucket, and still every guarantee of the three checks it replaced."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tests.support.api import ApiServer, Client, ServerFactory
from tests.support.waiting import wait_for
from veza_core.breaker import CircuitBreaker
from veza_core.ratelimit import Bucket, RateLimiter
from veza_local.services import LocalService, RedisService


async def test_a_logout_is_refused_at_once_by_every_replica(make_api: ServerFactory) -> None:
    """Two API processes of one platform: a logout on one is refused by the other on the next request, though
    both had seen the session active and keep that for a while (the revocation's notice reaches both)."""
    first = await make_api()
    second = await make_api(platform=first.settings.platform, jwt_keys_dir=first.keys_dir)
    tokens = await first.client.register_and_login()
    here = first.client.as_user(tokens["access_token"])
    there = Client(second.client.base, second.client.session, tokens["access_token"], here.ip)
    for _ in range(3):  # "active" cached and the verified token kept by both
        assert (await here.get("/api/v1/rooms")).status == 200
        assert (await there.get("/api/v1/rooms")).status == 200
    assert (await here.post("/api/v1/auth/logout")).status == 204
    for client in (there, here):
        refused = await client.get("/api/v1/rooms")
        assert refused.status == 401 and refused.body["error"]["code"] == "token_revoked"
        assert refused.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


async def _revoked_without_notice(server: ApiServer, why_still_served: str) -> Client:
    """A user whose session the replica has seen active in Redis (the first request finds it in PostgreSQL), then
    revoked in Redis without a notice: the replica still serves it from its memory."""
    tokens = await server.client.register_and_login()
    me = server.client.as_user(tokens["access_token"])
    for _ in range(2):
        assert (await me.get("/api/v1/rooms")).status == 200
    cache = aioredis.from_url(server.settings.redis_url or "")
    try:
        [key] = await cache.keys(f"veza:{server.settings.platform}:session-state:*")
        await cache.set(key, b"revoked")
    finally:
        await cache.aclose()
    assert (await me.get("/api/v1/rooms")).status == 200, why_still_served
    return me


async def _refused_within(me: Client, timeout: float, message: str) -> None:
    async def refused() -> bool:
        return (await me.get("/api/v1/rooms")).status == 401

    await wait_for(refused, timeout=timeout, interval=0.1, message=message)


async def test_a_revocation_whose_notice_is_lost_lapses_with_the_replicas_memory(make_api: ServerFactory) -> None:
    """A revocation written without its notice (the only way a replica misses one while subscribed): the replica
    serves the session from its memory, then refuses it once `session_cache_seconds` have passed."""
    server = await make_api(session_cache_seconds=0.5)
    me = await _revoked_without_notice(server, "served from the replica's memory, Redis not asked")
    await _refused_within(me, 3, "the session refused once forgotten")


async def test_a_replica_whose_revocation_notices_broke_asks_redis_again(make_api: ServerFactory) -> None:
    """Notices may be missed while the subscription is down: the replica forgets what it kept and asks Redis."""
    server = await make_api(session_cache_seconds=60)
    me = await _revoked_without_notice(server, "kept for a minute, and no notice came")
    cache = aioredis.from_url(server.settings.redis_url or "")
    try:
        await cache.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    finally:
        await cache.aclose()
    await _refused_within(me, 5, "the session refused once notices broke")


async def test_a_revocation_found_in_postgres_is_refused_and_remembered(make_api: ServerFactory) -> None:
    """No cached answer (a first request, or Redis forgot): PostgreSQL answers, and "revoked" is cached."""
    server = await make_api()
    tokens = await server.client.register_and_login()
    me = server.client.as_user(tokens["access_token"])
    assert (await me.post("/api/v1/auth/logout")).status == 204
    cache = aioredis.from_url(server.settings.redis_url or "")
    try:
        await cache.delete(*await cache.keys(f"veza:{server.settings.platform}:session-state:*"))
        refused = await me.get("/api/v1/me")
        assert refused.status == 401 and refused.body["error"]["code"] == "token_revoked"
        [key] = await cache.keys(f"veza:{server.settings.platform}:session-state:*")
        assert await cache.get(key) == b"revoked"
    finally:
        await cache.aclose()


async def test_concurrent_requests_without_a_cached_answer_share_its_lookup(make_api: ServerFactory) -> None:
    """A session's requests that find no cached state at once (a client keeping several going when its
    "active" answer lapses) all get PostgreSQL's answer, before and after a logout."""
    server = await make_api()
    tokens = await server.client.register_and_login()
    me = server.client.as_user(tokens["access_token"])
    cache = aioredis.from_url(server.settings.redis_url or "")
    pattern = f"veza:{server.settings.platform}:session-state:*"
    try:
        replies = await asyncio.gather(*[me.get("/api/v1/rooms") for _ in range(20)])
        assert [r.status for r in replies] == [200] * 20
        assert (await me.post("/api/v1/auth/logout")).status == 204
        await cache.delete(*await cache.keys(pattern))
        replies = await asyncio.gather(*[me.get("/api/v1/rooms") for _ in range(20)])
        assert {(r.status, r.body["error"]["code"]) for r in replies} == {(401, "token_revoked")}
        assert [await cache.get(k) for k in await cache.keys(pattern)] == [b"revoked"]
    finally:
        await cache.aclose()


async def test_limits_hold_per_user_and_per_address_on_every_path(make_api: ServerFactory) -> None:
    """The account's bucket is taken whether the session's state was cached or not, follows the account to
    another address, and a revoked session's requests do not take from it."""
    server = await make_api(rate_ip_per_second=0.01, rate_ip_burst=6, rate_user_per_second=0.01, rate_user_burst=4)
    tokens = await server.client.register_and_login()
    user = Client(server.client.base, server.client.session, tokens["access_token"])
    # The first request finds no cached state (PostgreSQL answers), the next ones find "active".
    statuses = [(await user.get("/api/v1/me")).status for _ in range(5)]
    assert statuses == [200, 200, 200, 200, 429]
    moved = Client(server.client.base, server.client.session, tokens["access_token"])
    limited = await moved.get("/api/v1/me")
    assert limited.status == 429 and "account" in limited.body["error"]["message"]

    # The address's bucket: 6 requests, then 429 before anything else (a valid token, an invalid one, none).
    other = await Client(server.client.base, server.client.session).register_and_login()
    address = Client(server.client.base, server.client.session, other["access_token"])
    assert [(await address.get("/api/v1/me")).status for _ in range(4)] == [200] * 4
    assert [(await address.as_user("not-a-token").get("/api/v1/me")).status for _ in range(2)] == [401, 401]
    for token in (other["access_token"], "not-a-token", None):
        refused = await address.as_user(token).get("/api/v1/me")
        assert refused.status == 429 and "address" in refused.body["error"]["message"]

    # A revoked session: 401, and its requests leave the account's bucket alone.
    third = await Client(server.client.base, server.client.session).register_and_login()
    session = Client(server.client.base, server.client.session, third["access_token"])
    assert (await session.post("/api/v1/auth/logout")).status == 204
    revoked = Client(server.client.base, server.client.session, third["access_token"])
    assert [(await revoked.get("/api/v1/me")).status for _ in range(4)] == [401] * 4
    fresh = await Client(server.client.base, server.client.session).post(
        "/api/v1/auth/login", {"email": third["email"], "password": "correct horse battery staple"})
    assert fresh.status == 200
    again = Client(server.client.base, server.client.session, fresh.body["access_token"])
    # The logout took one of the account's 4; the refused requests took none.
    assert [(await again.get("/api/v1/me")).status for _ in range(4)] == [200, 200, 200, 429]


async def test_concurrent_requests_each_get_their_own_answer(make_api: ServerFactory) -> None:
    """Requests served at once share the rate limiter's round trips (`ScriptPipeline`): each still gets its own
    session's answer and its own account's bucket."""
    server = await make_api(rate_user_per_second=0.01, rate_user_burst=5)
    kept = server.client.as_user((await server.client.register_and_login())["access_token"])
    ended = await Client(server.client.base, server.client.session).register_and_login()
    gone = Client(server.client.base, server.client.session, ended["access_token"])
    assert (await kept.get("/api/v1/me")).status == 200  # "active" cached: the next ones read it with the buckets
    assert (await gone.post("/api/v1/auth/logout")).status == 204
    replies = await asyncio.gather(*[kept.get("/api/v1/rooms") for _ in range(6)],
                                   *[gone.get("/api/v1/rooms") for _ in range(4)])
    assert sorted(r.status for r in replies[:6]) == [200] * 4 + [429] * 2, "4 left of the account's 5"
    assert {(r.status, r.body["error"]["code"]) for r in replies[6:]} == {(401, "token_revoked")}


async def test_redis_down_limits_per_replica_and_asks_postgres(make_api: ServerFactory,
                                                               service_factory: Callable[[type[LocalService]],
                                                                                         LocalService]) -> None:
    """As documented: limits fall back to the replica's memory, revocation to PostgreSQL; Redis back, both
    return to it."""
    cache = service_factory(RedisService)
    assert isinstance(cache, RedisService)
    server = await make_api(redis_url=cache.url, rate_user_per_second=0.01, rate_user_burst=8)
    kept = await server.client.register_and_login()
    ended = await Client(server.client.base, server.client.session).register_and_login()
    me = server.client.as_user(kept["access_token"])
    gone = Client(server.client.base, server.client.session, ended["access_token"])
    assert (await me.get("/api/v1/me")).status == 200
    assert (await gone.get("/api/v1/me")).status == 200
    cache.kill()
    assert (await gone.post("/api/v1/auth/logout")).status == 204  # its Redis write fails; PostgreSQL has it
    refused = await gone.get("/api/v1/me")
    assert refused.status == 401 and refused.body["error"]["code"] == "token_revoked"
    # The account's bucket now lives in this replica's memory (full, 8): it still limits.
    statuses = [(await me.get("/api/v1/me")).status for _ in range(9)]
    assert statuses[-1] == 429 and statuses.count(200) == 8, statuses
    cache.start()
    back = aioredis.from_url(cache.url)
    try:
        async def revoked_cached_again() -> bool:
            assert (await gone.get("/api/v1/me")).status == 401
            return bool(await back.keys(f"veza:{server.settings.platform}:session-state:*"))

        # Redis back (and the breakers closed): PostgreSQL's answer is cached there again.
        await wait_for(revoked_cached_again, timeout=10, interval=0.5, message="the session's state in Redis")
    finally:
        await back.aclose()


async def test_hit_gated_takes_the_same_buckets_as_hit(redis: RedisService) -> None:
    """The gated script is the bucket script: a bucket taken by either path is one bucket; the buckets after
    the gate are taken only when the gate holds the passing value, and a refusal stops the chain."""
    client = aioredis.from_url(redis.url)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    limiter = RateLimiter(client, prefix=prefix)
    gate = f"{prefix}:gate"
    ip, user = Bucket("ip:a", rate=0.01, burst=3), Bucket("user:a", rate=0.01, burst=2)
    try:
        missing = await limiter.hit_gated([ip], gate, b"go", [user])
        assert missing.gate is None and missing.gate_read and [d.allowed for d in missing.decisions] == [True]
        await client.set(gate, b"stop")
        stopped = await limiter.hit_gated([ip], gate, b"go", [user])
        assert stopped.gate == b"stop" and len(stopped.decisions) == 1
        await client.set(gate, b"go")
        passed = await limiter.hit_gated([ip], gate, b"go", [user])
        assert passed.gate == b"go" and [d.allowed for d in passed.decisions] == [True, True]
        assert not (await limiter.hit(ip.key, rate=ip.rate, burst=ip.burst)).allowed, "3 taken: 2 gated, 1 here"
        refused = await limiter.hit_gated([ip], gate, b"go", [user])
        assert not refused.gate_read and refused.gate is None and len(refused.decisions) == 1
        assert not refused.decisions[0].allowed and refused.decisions[0].retry_after > 1
        assert (await limiter.hit(user.key, rate=user.rate, burst=user.burst)).allowed, "1 of 2 taken"
        assert not (await limiter.hit(user.key, rate=user.rate, burst=user.burst)).allowed
    finally:
        await client.aclose()


async def test_hit_gated_falls_back_to_process_memory(service_factory: Callable[[type[LocalService]],
                                                                               LocalService]) -> None:
    server = service_factory(RedisService)
    client = aioredis.from_url(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    breaker = CircuitBreaker("t-gated", failure_threshold=1, reset_after=30, errors=(RedisError, OSError))
    limiter = RateLimiter(client, prefix="t3", breaker=breaker)
    try:
        server.kill()
        ip = Bucket("ip:b", rate=0.01, burst=2)
        results = [await limiter.hit_gated([ip], "t3:gate", b"go", [Bucket("user:b", rate=1, burst=1)])
                   for _ in range(3)]
        assert [r.decisions[0].allowed for r in results] == [True, True, False]
        assert all(not r.gate_read and r.gate is None and len(r.decisions) == 1 for r in results)
        assert breaker.is_open
    finally:
        await client.aclose()
