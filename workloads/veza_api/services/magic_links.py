"""Magic links: a single-use, expiring login link sent by email.

Anyone may ask for a link for any address (following it creates the account if
needed, since it proves the address), so the answer never reveals whether an
account exists. Only the sha256 of the token is stored.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from veza_core.web import HttpError

from ..context import Api
from ..mail import MailError
from . import audit
from .accounts import limit_attempts, open_session, user_for_email
from .sessions import token_hash
from .users import normalise_email


async def send_link(ctx: Api, email: str, ip: str) -> None:
    email = normalise_email(email)
    await limit_attempts(ctx, "magic-link", email, ip)
    if not ctx.mailer.configured:
        raise HttpError(503, "mail_unavailable", "this platform sends no email")
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
        raise HttpError(503, "mail_unavailable", "the login link could not be sent; try again later") from exc
    await audit.record(ctx.pool, "magic_link.sent", subject=email, ip=ip)


async def redeem(ctx: Api, token: str, ip: str) -> dict[str, Any]:
    """Veza tokens for a link's token, which then stops working."""
    email = await ctx.pool.fetchval(
        "UPDATE magic_links SET used_at = now() WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()"
        " RETURNING email", token_hash(token))
    if email is None:
        await audit.record(ctx.pool, "login.failure", ip=ip, method="magic_link",
                           reason="unknown, used or expired link")
        raise HttpError(401, "invalid_magic_link", "this login link is unknown, used or expired")
    user = await user_for_email(ctx, email, email.split("@", 1)[0][:100] or "user", "magic_link", ip)
    if user["disabled"]:
        await audit.record(ctx.pool, "login.failure", actor=str(user["id"]), subject=email, ip=ip,
                           method="magic_link", reason="disabled")
        raise HttpError(401, "invalid_magic_link", "this account is disabled")
    return await open_session(ctx, user, "magic_link", ip)
