"""Sessions and refresh tokens.

A login opens a session; its refresh tokens form a family. Each refresh token is
opaque, used once, and stored only as its sha256. Presenting a token that was
already used means someone holds a copy: the whole session is revoked.

Access tokens carry the session id (claim `sid`). PostgreSQL holds whether a
session is revoked; Redis only caches that answer for the auth middleware:
"revoked" for as long as an access token can live, "active" for
`ACTIVE_CACHE_SECONDS`. A miss (eviction, a flush, a restart) asks PostgreSQL
again, so a revoked token never works again because Redis forgot it. Revoking
overwrites the cached answer, and a reader caches "active" only where no answer
is cached (SET NX), so a read racing a revocation cannot hide it; only a
revocation whose Redis write failed leaves an "active" answer standing, for at
most `ACTIVE_CACHE_SECONDS`. The middleware reads the cached answer in the same Redis round trip as the
request's rate limits (`RateLimiter.hit_gated`). If Redis is unreachable the middleware asks PostgreSQL directly
(slower, same answer).

Each replica also keeps the sessions it found active for `session_cache_seconds` (`revocations.ActiveSessions`),
so that a busy session's requests need not ask Redis each: a revocation is published on Redis with its cached
answer, and every replica forgets the session when the notice arrives (the replica that revoked it, before
answering). A replica uses what it keeps only while it is subscribed: it forgets everything when its subscription
starts and when it breaks, since notices may have been missed; a notice lost otherwise lapses with
`session_cache_seconds`.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from redis.exceptions import RedisError

from ..context import Api
from . import events

# How long an "active" answer may be served from Redis (the staleness bound when a revocation's Redis
# write fails): short, since every miss costs one indexed PostgreSQL read.
ACTIVE_CACHE_SECONDS = 10
REVOKED, ACTIVE = b"revoked", b"active"


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class Rotation:
    outcome: str  # "ok" | "unknown" | "expired" | "reused" | "revoked"
    session_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    refresh_token: str | None = None


async def _new_refresh_token(conn: asyncpg.Connection, ctx: Api, session_id: uuid.UUID) -> str:
    token = secrets.token_urlsafe(32)
    expires = datetime.now(UTC) + timedelta(seconds=ctx.settings.refresh_ttl_seconds)
    await conn.execute("INSERT INTO refresh_tokens (token_hash, session_id, expires_at) VALUES ($1, $2, $3)",
                       token_hash(token), session_id, expires)
    return token


async def start_session(ctx: Api, user_id: uuid.UUID, method: str) -> tuple[uuid.UUID, str]:
    async with ctx.pool.acquire() as conn, conn.transaction():
        session_id = await conn.fetchval("INSERT INTO sessions (user_id, method) VALUES ($1, $2) RETURNING id",
                                         user_id, method)
        return session_id, await _new_refresh_token(conn, ctx, session_id)


async def rotate(ctx: Api, token: str) -> Rotation:
    """Exchange a refresh token for the next one of its family."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT t.session_id, t.expires_at, t.used_at, s.user_id, s.revoked_at"
            " FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id"
            " WHERE t.token_hash = $1 FOR UPDATE OF t, s", token_hash(token))
        if row is None:
            return Rotation("unknown")
        sid, uid = row["session_id"], row["user_id"]
        if row["revoked_at"] is not None:
            return Rotation("revoked", sid, uid)
        if row["used_at"] is not None:
            await conn.execute("UPDATE sessions SET revoked_at = now(), revoked_why = 'refresh token reused'"
                               " WHERE id = $1", sid)
            outcome = Rotation("reused", sid, uid)
        elif row["expires_at"] <= datetime.now(UTC):
            return Rotation("expired", sid, uid)
        else:
            await conn.execute("UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1", token_hash(token))
            return Rotation("ok", sid, uid, await _new_refresh_token(conn, ctx, sid))
    await mark_revoked(ctx, [sid])
    await events.session_revoked(ctx, uid, sid, "reused")
    return outcome


async def revoke_session(ctx: Api, session_id: uuid.UUID, why: str, reason: str) -> None:
    """Ends one session; `why` is kept in the database, `reason` is the event's stable code."""
    user = await ctx.pool.fetchval("UPDATE sessions SET revoked_at = coalesce(revoked_at, now()), revoked_why = $2"
                                   " WHERE id = $1 RETURNING user_id", session_id, why)
    await mark_revoked(ctx, [session_id])
    if user is not None:
        await events.session_revoked(ctx, user, session_id, reason)


async def revoke_user_sessions(ctx: Api, user_id: uuid.UUID, why: str, reason: str) -> None:
    rows = await ctx.pool.fetch("UPDATE sessions SET revoked_at = now(), revoked_why = $2"
                                " WHERE user_id = $1 AND revoked_at IS NULL RETURNING id", user_id, why)
    await mark_revoked(ctx, [r["id"] for r in rows])
    await events.session_revoked(ctx, user_id, None, reason)


def state_key(ctx: Api, session_id: uuid.UUID) -> str:
    """Where Redis caches a session's state (`REVOKED` or `ACTIVE`); the middleware reads it in the same round
    trip as the request's rate limits."""
    return ctx.redis_key("session-state", str(session_id))


def revocations_channel(ctx: Api) -> str:
    """Where revocations are announced to every replica (`ActiveSessions`): session ids, space-separated."""
    return ctx.redis_key("session-revocations")


async def mark_revoked(ctx: Api, session_ids: list[uuid.UUID]) -> None:
    """Caches "revoked" for sessions PostgreSQL already says are revoked (overwriting "active"), and tells every
    replica to forget them (this one at once)."""
    if not session_ids:
        return
    ctx.sessions.forget(session_ids)
    ttl = ctx.settings.access_ttl_seconds + 60  # an access token's life plus the verifier's leeway
    try:
        async with ctx.redis.pipeline(transaction=False) as pipe:
            for sid in session_ids:
                pipe.set(state_key(ctx, sid), REVOKED, ex=ttl)
            pipe.publish(revocations_channel(ctx), " ".join(str(sid) for sid in session_ids))
            await pipe.execute()
    except (RedisError, OSError):
        pass  # PostgreSQL holds the truth; a cached "active" answer lapses within ACTIVE_CACHE_SECONDS


async def _revoked_in_postgres(ctx: Api, sid: uuid.UUID) -> bool:
    row = await ctx.pool.fetchrow("SELECT revoked_at FROM sessions WHERE id = $1", sid)
    return row is None or row["revoked_at"] is not None


# Lookups in flight, per API context and session: the requests of one session that find no cached answer at once
# (its "active" answer just lapsed, and a client keeps several requests going) share one PostgreSQL read.
_LOOKUPS: dict[tuple[int, uuid.UUID, bool], asyncio.Future[bool]] = {}


async def is_revoked_uncached(ctx: Api, sid: uuid.UUID, *, redis_answered: bool) -> bool:
    """PostgreSQL's answer for a session Redis held no answer for; cached for the next requests when Redis
    answered (missing), asked straight from PostgreSQL when it did not (unreachable). Requests arriving while a
    read for their session runs take its answer: a revocation committed during that read is seen by the next
    ones, as it is by a request that read Redis just before the revocation's write."""
    key = (id(ctx), sid, redis_answered)
    lookup = _LOOKUPS.get(key)
    if lookup is None:
        lookup = asyncio.ensure_future(_lookup(ctx, sid, redis_answered))
        _LOOKUPS[key] = lookup
        lookup.add_done_callback(lambda _: _LOOKUPS.pop(key, None))
    return await asyncio.shield(lookup)  # one waiter cancelled does not cancel the others' read


async def _lookup(ctx: Api, sid: uuid.UUID, redis_answered: bool) -> bool:
    if not redis_answered:
        return await _revoked_in_postgres(ctx, sid)

    async def from_postgres() -> bool:
        return await _revoked_in_postgres(ctx, sid)

    return await ctx.redis_breaker.call(lambda: _revoked_and_cached(ctx, sid), from_postgres)


async def _revoked_and_cached(ctx: Api, sid: uuid.UUID) -> bool:
    revoked = await _revoked_in_postgres(ctx, sid)
    key = state_key(ctx, sid)
    if revoked:
        await ctx.redis.set(key, REVOKED, ex=ctx.settings.access_ttl_seconds + 60)
    else:  # NX: a revocation written meanwhile wins over this older answer
        await ctx.redis.set(key, ACTIVE, ex=ACTIVE_CACHE_SECONDS, nx=True)
    return revoked
