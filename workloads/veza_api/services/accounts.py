"""Accounts and logins, whichever way the caller proves who they are: register,
password login, refresh, logout, and what every login method shares (the
attempt limits, finding or creating the account of a proven email, opening a
session).

`ip` is the client's address, for the attempt limit and the audit log.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import uuid
from typing import Any

import asyncpg
from redis.exceptions import RedisError

from veza_core.auth import Principal
from veza_core.ratelimit import Decision
from veza_core.web import HttpError

from ..context import Api
from . import audit
from .sessions import revoke_session, revoke_user_sessions, rotate, start_session
from .tokens import token_pair
from .users import create_user, find_by_email, find_by_id, normalise_email


def too_many(decision: Decision, what: str) -> HttpError:
    wait = max(1, math.ceil(decision.retry_after))
    return HttpError(429, "rate_limited", f"too many {what}; retry in {wait} s", headers={"Retry-After": str(wait)})


# How long a successful login makes its client address "known" for the account (exempt from the
# account's own bucket).
KNOWN_ADDRESS_SECONDS = 30 * 24 * 3600


def _known_key(ctx: Api, account: str, ip: str) -> str:
    digest = hashlib.sha256(normalise_email(account).encode()).hexdigest()[:32]  # no addresses in key names
    return ctx.redis_key("login-known", digest, ip)


async def _known_address(ctx: Api, account: str, ip: str) -> bool:
    async def from_redis() -> bool:
        return bool(await ctx.redis.exists(_known_key(ctx, account, ip)))

    async def unknown() -> bool:
        return False

    return await ctx.redis_breaker.call(from_redis, unknown)


async def remember_address(ctx: Api, account: str, ip: str) -> None:
    # Without Redis the owner meets the account's bucket from this address, as from any new one.
    with contextlib.suppress(RedisError, OSError):
        await ctx.redis.set(_known_key(ctx, account, ip), b"1", ex=KNOWN_ADDRESS_SECONDS)


async def limit_attempts(ctx: Api, kind: str, account: str, ip: str) -> None:
    """Attempts per client address, whatever the account; and per account, but only from addresses that
    have not logged in to it lately. A botnet still meets the account's bucket, while nobody can lock the
    owner out of their account from where they usually log in by failing logins for it elsewhere."""
    s = ctx.settings
    rate = s.rate_login_per_minute / 60
    keys = [f"{kind}-ip:{ip}"]
    if not await _known_address(ctx, account, ip):
        keys.append(f"{kind}-account:{account}")
    for key in keys:
        decision = await ctx.limiter.hit(key, rate=rate, burst=s.rate_login_burst)
        if not decision.allowed:
            raise too_many(decision, f"{kind} attempts")


async def open_session(ctx: Api, user: asyncpg.Record, method: str, ip: str) -> dict[str, Any]:
    """A new session for `user`, audited; the answer of every successful login."""
    session_id, refresh_token = await start_session(ctx, user["id"], method)
    await remember_address(ctx, user["email"], ip)
    await audit.record(ctx.pool, "login.success", actor=str(user["id"]), subject=str(user["id"]), ip=ip,
                       method=method, session=str(session_id))
    return await token_pair(ctx, user, session_id, refresh_token)


async def grant_bootstrap_admin(ctx: Api, conn: asyncpg.Connection, user: asyncpg.Record, ip: str) -> None:
    """`admin` for the account of VEZA_BOOTSTRAP_ADMIN_EMAIL, at the moment its address is proven."""
    wanted = ctx.settings.bootstrap_admin_email
    if not wanted or user["email"] != normalise_email(wanted) or "admin" in user["roles"]:
        return
    await conn.execute("UPDATE users SET roles = array_append(roles, 'admin'), updated_at = now() WHERE id = $1",
                       user["id"])
    await audit.record(conn, "role.granted", subject=str(user["id"]), ip=ip, role="admin", scope="platform",
                       reason="bootstrap admin email, verified")


async def mark_verified(ctx: Api, user: asyncpg.Record, method: str, ip: str, *, keep_password: bool) -> bool:
    """Records that the account's address is proven; True if it was not before.

    Proven by someone who did not show the password (a magic link, OIDC), the account may have been
    registered by someone else: its password is cleared and its sessions end, so whoever set it is out.
    """
    async with ctx.pool.acquire() as conn, conn.transaction():
        proven = await conn.fetchrow(
            "UPDATE users SET email_verified_at = now(), updated_at = now(),"
            " password_hash = CASE WHEN $2 THEN password_hash END"
            " WHERE id = $1 AND email_verified_at IS NULL RETURNING id, email, roles", user["id"], keep_password)
        if proven is None:
            return False
        await audit.record(conn, "user.email_verified", actor=str(user["id"]), subject=str(user["id"]), ip=ip,
                           method=method, password_cleared=not keep_password and user["password_hash"] is not None)
        await grant_bootstrap_admin(ctx, conn, proven, ip)
    if not keep_password:
        await revoke_user_sessions(ctx, user["id"], "address proven by another login", "email_verified")
    return True


async def verified_login_account(ctx: Api, email: str, display_name: str, method: str, ip: str) -> asyncpg.Record:
    """The account of an email the login `method` proved: created (verified, without a password) if there is
    none, and if it was unverified, now verified with its password cleared (`mark_verified`)."""
    user = await find_by_email(ctx.pool, email)
    if user is None:
        made = await create_user(ctx.pool, email=email, display_name=display_name, password_hash=None, verified=True)
        if made is not None:
            await audit.record(ctx.pool, "user.registered", actor=str(made["id"]), subject=str(made["id"]), ip=ip,
                               method=method)
            async with ctx.pool.acquire() as conn:
                await grant_bootstrap_admin(ctx, conn, made, ip)
        user = await find_by_email(ctx.pool, email)  # whoever won a race, with its password hash column
        assert user is not None
    elif await mark_verified(ctx, user, method, ip, keep_password=False):
        user = await find_by_email(ctx.pool, email)
        assert user is not None
    return user


async def password_login(ctx: Api, *, email: str, password: str, ip: str) -> dict[str, Any]:
    email = normalise_email(email)
    await limit_attempts(ctx, "login", email, ip)
    user = await find_by_email(ctx.pool, email)
    ok = await ctx.passwords.verify(user["password_hash"] if user else None, password)
    if not ok or user is None or user["disabled"]:
        await audit.record(ctx.pool, "login.failure", actor=str(user["id"]) if user else None, subject=email,
                           ip=ip, reason="disabled" if ok and user else "bad credentials")
        raise HttpError(401, "invalid_credentials", "wrong email or password")
    if ctx.passwords.needs_rehash(user["password_hash"]):
        # The cost settings changed since this hash was made: upgrade it now that we know the password.
        await ctx.pool.execute("UPDATE users SET password_hash = $2 WHERE id = $1", user["id"],
                               await ctx.passwords.hash(password))
    return await open_session(ctx, user, "password", ip)


async def refresh(ctx: Api, refresh_token: str, ip: str) -> dict[str, Any]:
    """The next token pair of the session; a reused refresh token ends the session."""
    result = await rotate(ctx, refresh_token)
    actor = str(result.user_id) if result.user_id else None
    subject = str(result.session_id) if result.session_id else None
    if result.outcome == "reused":
        await audit.record(ctx.pool, "token.reuse", actor=actor, subject=subject, ip=ip, action="session revoked")
        raise HttpError(401, "refresh_token_reused", "this refresh token was already used; the session is revoked")
    if result.outcome != "ok" or result.session_id is None or result.refresh_token is None:
        await audit.record(ctx.pool, "token.refresh_failure", actor=actor, subject=subject, ip=ip,
                           reason=result.outcome)
        raise HttpError(401, "invalid_refresh_token", "the refresh token is unknown, expired or revoked")
    assert result.user_id is not None  # a rotated token belongs to a session, which belongs to a user
    user = await find_by_id(ctx.pool, result.user_id)
    if user is None or user["disabled"]:
        await revoke_session(ctx, result.session_id, "user disabled", "disabled")
        raise HttpError(401, "invalid_refresh_token", "the account is disabled")
    await audit.record(ctx.pool, "token.refresh", actor=actor, subject=subject, ip=ip)
    return await token_pair(ctx, user, result.session_id, result.refresh_token)


async def logout(ctx: Api, who: Principal, ip: str) -> None:
    """Ends the session of the access token: its refresh tokens and access tokens stop working."""
    sid = uuid.UUID(str(who.claims["sid"]))  # the auth middleware accepts only tokens with a valid sid
    await revoke_session(ctx, sid, "logout", "logout")
    await audit.record(ctx.pool, "session.logout", actor=who.subject, subject=str(sid), ip=ip)
