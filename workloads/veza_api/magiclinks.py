"""Magic links: a single-use, expiring login link sent by email.

Anyone may ask for a link for any address (following it creates the account if
needed, since it proves the address), so the answer never reveals whether an
account exists. Only the sha256 of the token is stored.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from aiohttp import web
from pydantic import BaseModel, Field

from . import audit
from .accounts import EMAIL_PATTERN, limit_attempts, open_session
from .context import api
from .errors import ApiError, read_json
from .mail import MailError
from .sessions import token_hash
from .users import create_user, find_by_email, normalise_email


class LinkRequest(BaseModel):
    email: str = Field(max_length=254, pattern=EMAIL_PATTERN)


class LinkToken(BaseModel):
    token: str = Field(max_length=256)


async def request_link(request: web.Request) -> web.Response:
    body = await read_json(request, LinkRequest)
    ctx = api(request)
    email = normalise_email(body.email)
    await limit_attempts(request, "magic-link", email)
    if not ctx.mailer.configured:
        raise ApiError(503, "mail_unavailable", "this platform sends no email")
    token = secrets.token_urlsafe(32)
    expires = datetime.now(UTC) + timedelta(seconds=ctx.settings.magic_link_ttl_seconds)
    await ctx.pool.execute("INSERT INTO magic_links (token_hash, email, expires_at) VALUES ($1, $2, $3)",
                           token_hash(token), email, expires)
    link = f"{ctx.settings.public_url.rstrip('/')}/login/magic?{urlencode({'token': token})}"
    minutes = max(1, ctx.settings.magic_link_ttl_seconds // 60)
    try:
        await ctx.mailer.send(email, "Your Veza login link",
                              f"Open this link to log in to Veza (valid {minutes} minutes, once):\n\n{link}\n\n"
                              "If you did not ask for it, ignore this message.\n")
    except MailError as exc:
        raise ApiError(503, "mail_unavailable", "the login link could not be sent; try again later") from exc
    await audit.record(ctx.pool, "magic_link.sent", subject=email, request=request)
    return web.json_response({"status": "sent", "expires_in": ctx.settings.magic_link_ttl_seconds}, status=202)


async def redeem_link(request: web.Request) -> web.Response:
    body = await read_json(request, LinkToken)
    ctx = api(request)
    email = await ctx.pool.fetchval(
        "UPDATE magic_links SET used_at = now() WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()"
        " RETURNING email", token_hash(body.token))
    if email is None:
        await audit.record(ctx.pool, "login.failure", request=request, method="magic_link",
                           reason="unknown, used or expired link")
        raise ApiError(401, "invalid_magic_link", "this login link is unknown, used or expired")
    user = await find_by_email(ctx.pool, email)
    if user is None:
        await create_user(ctx.pool, email=email, display_name=email.split("@", 1)[0][:100] or "user",
                          password_hash=None, bootstrap_admin=ctx.settings.bootstrap_admin_email)
        user = await find_by_email(ctx.pool, email)
        assert user is not None
        await audit.record(ctx.pool, "user.registered", actor=str(user["id"]), subject=str(user["id"]),
                           request=request, method="magic_link")
    if user["disabled"]:
        await audit.record(ctx.pool, "login.failure", actor=str(user["id"]), subject=email, request=request,
                           method="magic_link", reason="disabled")
        raise ApiError(401, "invalid_magic_link", "this account is disabled")
    return web.json_response(await open_session(ctx, request, user, "magic_link"))
