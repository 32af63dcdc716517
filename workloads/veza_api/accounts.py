"""Register, log in with a password, refresh, log out."""

from __future__ import annotations

import math
import uuid

import asyncpg
from aiohttp import web
from pydantic import BaseModel, Field

from veza_core.ratelimit import Decision

from . import audit
from .context import Api, api, client_ip
from .errors import ApiError, read_json
from .rbac import require_user
from .sessions import revoke_session, rotate, start_session
from .tokens import token_pair
from .users import USER_COLUMNS, create_user, find_by_email, normalise_email, user_json

# Deliberately loose: the address is proven by use (magic links), not by its shape.
EMAIL_PATTERN = r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$"


class Registration(BaseModel):
    email: str = Field(max_length=254, pattern=EMAIL_PATTERN)
    password: str = Field(min_length=10, max_length=1024)
    display_name: str = Field(min_length=1, max_length=100)


class Credentials(BaseModel):
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)


class RefreshRequest(BaseModel):
    refresh_token: str = Field(max_length=512)


def too_many(decision: Decision, what: str) -> ApiError:
    wait = max(1, math.ceil(decision.retry_after))
    return ApiError(429, "rate_limited", f"too many {what}; retry in {wait} s", headers={"Retry-After": str(wait)})


async def limit_attempts(request: web.Request, kind: str, account: str) -> None:
    """Per client IP and per account, so neither one address nor a botnet can hammer one account."""
    ctx = api(request)
    s = ctx.settings
    rate = s.rate_login_per_minute / 60
    for key in (f"{kind}-ip:{client_ip(request)}", f"{kind}-account:{account}"):
        decision = await ctx.limiter.hit(key, rate=rate, burst=s.rate_login_burst)
        if not decision.allowed:
            raise too_many(decision, f"{kind} attempts")


async def register(request: web.Request) -> web.Response:
    body = await read_json(request, Registration)
    ctx = api(request)
    await limit_attempts(request, "register", normalise_email(body.email))
    password_hash = await ctx.passwords.hash(body.password)
    user = await create_user(ctx.pool, email=body.email, display_name=body.display_name.strip() or body.display_name,
                             password_hash=password_hash, bootstrap_admin=ctx.settings.bootstrap_admin_email)
    if user is None:
        raise ApiError(409, "email_taken", "an account with this email already exists")
    await audit.record(ctx.pool, "user.registered", actor=str(user["id"]), subject=str(user["id"]), request=request)
    if user["roles"]:
        await audit.record(ctx.pool, "role.granted", subject=str(user["id"]), request=request, role="admin",
                           scope="platform", reason="bootstrap admin email")
    return web.json_response(user_json(user), status=201)


async def login(request: web.Request) -> web.Response:
    body = await read_json(request, Credentials)
    ctx = api(request)
    email = normalise_email(body.email)
    await limit_attempts(request, "login", email)
    user = await find_by_email(ctx.pool, email)
    ok = await ctx.passwords.verify(user["password_hash"] if user else None, body.password)
    if not ok or user is None or user["disabled"]:
        await audit.record(ctx.pool, "login.failure", actor=str(user["id"]) if user else None, subject=email,
                           request=request, reason="disabled" if ok and user else "bad credentials")
        raise ApiError(401, "invalid_credentials", "wrong email or password")
    if ctx.passwords.needs_rehash(user["password_hash"]):
        # The cost settings changed since this hash was made: upgrade it now that we know the password.
        await ctx.pool.execute("UPDATE users SET password_hash = $2 WHERE id = $1", user["id"],
                               await ctx.passwords.hash(body.password))
    return web.json_response(await open_session(ctx, request, user, "password"))


async def open_session(ctx: Api, request: web.Request, user: asyncpg.Record, method: str) -> dict[str, object]:
    session_id, refresh_token = await start_session(ctx, user["id"], method)
    await audit.record(ctx.pool, "login.success", actor=str(user["id"]), subject=str(user["id"]), request=request,
                       method=method, session=str(session_id))
    return await token_pair(ctx, user, session_id, refresh_token)


async def refresh(request: web.Request) -> web.Response:
    body = await read_json(request, RefreshRequest)
    ctx = api(request)
    result = await rotate(ctx, body.refresh_token)
    actor = str(result.user_id) if result.user_id else None
    subject = str(result.session_id) if result.session_id else None
    if result.outcome == "reused":
        await audit.record(ctx.pool, "token.reuse", actor=actor, subject=subject, request=request,
                           action="session revoked")
        raise ApiError(401, "refresh_token_reused", "this refresh token was already used; the session is revoked")
    if result.outcome != "ok" or result.session_id is None or result.refresh_token is None:
        await audit.record(ctx.pool, "token.refresh_failure", actor=actor, subject=subject, request=request,
                           reason=result.outcome)
        raise ApiError(401, "invalid_refresh_token", "the refresh token is unknown, expired or revoked")
    user = await ctx.pool.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1", result.user_id)  # noqa: S608
    if user is None or user["disabled"]:
        await revoke_session(ctx, result.session_id, "user disabled")
        raise ApiError(401, "invalid_refresh_token", "the account is disabled")
    await audit.record(ctx.pool, "token.refresh", actor=actor, subject=subject, request=request)
    return web.json_response(await token_pair(ctx, user, result.session_id, result.refresh_token))


async def logout(request: web.Request) -> web.Response:
    """Ends the session of the access token: its refresh tokens and access tokens stop working."""
    who = require_user(request)
    ctx = api(request)
    sid = uuid.UUID(str(who.claims["sid"]))  # the auth middleware accepts only tokens with a valid sid
    await revoke_session(ctx, sid, "logout")
    await audit.record(ctx.pool, "session.logout", actor=who.subject, subject=str(sid), request=request)
    return web.Response(status=204)
