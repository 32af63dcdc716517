"""Links mailed to an address: single use, expiring, only the sha256 of the token stored.

- A *login* link (`POST /auth/magic-link`): anyone may ask for one for any address (following it
  creates the account if needed, since it proves the address), so the answer never reveals whether an
  account exists. Following it is a verified login: an unverified account of that address is verified,
  its password cleared and its sessions ended (`accounts.mark_verified`).
- A *verify* link (mailed at registration): redeemed together with the account's password, it proves
  that whoever set the password also reads the mailbox; the password is kept.

The token travels in the URL's fragment (`/login/magic#token=...`), which browsers never send to a
server: it stays out of access logs and Referer headers. The web client's page posts it here.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg

from veza_core.web import HttpError

from ..context import Api
from ..mail import MailError
from . import audit
from .accounts import limit_attempts, mark_verified, open_session, verified_login_account
from .sessions import token_hash
from .users import find_by_email, normalise_email

Purpose = Literal["login", "verify"]


async def new_link(ctx: Api, email: str, purpose: Purpose) -> str:
    """The URL of a fresh link for `email` (the token in the fragment, never in the query)."""
    token = secrets.token_urlsafe(32)
    expires = datetime.now(UTC) + timedelta(seconds=ctx.settings.magic_link_ttl_seconds)
    await ctx.pool.execute("INSERT INTO magic_links (token_hash, email, expires_at, purpose) VALUES ($1, $2, $3, $4)",
                           token_hash(token), normalise_email(email), expires, purpose)
    confirm = "&confirm=1" if purpose == "verify" else ""
    return f"{ctx.settings.public_url.rstrip('/')}/login/magic#token={token}{confirm}"


def minutes(ctx: Api) -> int:
    return max(1, ctx.settings.magic_link_ttl_seconds // 60)


async def mail(ctx: Api, email: str, subject: str, body: str) -> None:
    try:
        await ctx.mailer.send(email, subject, body)
    except MailError as exc:
        raise HttpError(503, "mail_unavailable", "the mail could not be sent; try again later") from exc


async def send_link(ctx: Api, email: str, ip: str) -> None:
    email = normalise_email(email)
    await limit_attempts(ctx, "magic-link", email, ip)
    if not ctx.mailer.configured:
        raise HttpError(503, "mail_unavailable", "this platform sends no email")
    link = await new_link(ctx, email, "login")
    await mail(ctx, email, "Your Veza login link",
               f"Open this link to log in to Veza (valid {minutes(ctx)} minutes, once):\n\n{link}\n\n"
               "If you did not ask for it, ignore this message.\n")
    await audit.record(ctx.pool, "magic_link.sent", subject=email, ip=ip)


async def _link(ctx: Api, token: str, ip: str) -> asyncpg.Record:
    row = await ctx.pool.fetchrow("SELECT email, purpose FROM magic_links WHERE token_hash = $1 AND used_at IS NULL"
                                  " AND expires_at > now()", token_hash(token))
    if row is None:
        await audit.record(ctx.pool, "login.failure", ip=ip, method="magic_link",
                           reason="unknown, used or expired link")
        raise HttpError(401, "invalid_magic_link", "this link is unknown, used or expired")
    return row


async def _use(ctx: Api, token: str) -> None:
    """Single use: of two redemptions racing, one wins."""
    used = await ctx.pool.fetchval("UPDATE magic_links SET used_at = now() WHERE token_hash = $1 AND used_at IS NULL"
                                   " RETURNING 1", token_hash(token))
    if used is None:
        raise HttpError(401, "invalid_magic_link", "this link is unknown, used or expired")


async def redeem(ctx: Api, token: str, password: str | None, ip: str) -> dict[str, Any]:
    """Veza tokens for a link's token, which then stops working."""
    link = await _link(ctx, token, ip)
    if link["purpose"] == "verify":
        return await _confirm_registration(ctx, token, link["email"], password, ip)
    await _use(ctx, token)
    user = await verified_login_account(ctx, link["email"], link["email"].split("@", 1)[0][:100] or "user",
                                        "magic_link", ip)
    if user["disabled"]:
        await audit.record(ctx.pool, "login.failure", actor=str(user["id"]), subject=link["email"], ip=ip,
                           method="magic_link", reason="disabled")
        raise HttpError(401, "invalid_magic_link", "this account is disabled")
    return await open_session(ctx, user, "magic_link", ip)


async def _confirm_registration(ctx: Api, token: str, email: str, password: str | None, ip: str) -> dict[str, Any]:
    """A registration's link with its password: the address is proven by whoever set the password."""
    await limit_attempts(ctx, "login", email, ip)  # the password is guessed here as much as at /auth/login
    user = await find_by_email(ctx.pool, email)
    ok = password is not None and await ctx.passwords.verify(user["password_hash"] if user else None, password)
    if not ok or user is None or user["disabled"]:
        await audit.record(ctx.pool, "login.failure", actor=str(user["id"]) if user else None, subject=email, ip=ip,
                           method="verify_link", reason="bad credentials" if not ok else "disabled")
        raise HttpError(401, "invalid_credentials", "this link confirms a registration: send its password too")
    await _use(ctx, token)
    await mark_verified(ctx, user, "verify_link", ip, keep_password=True)
    user = await find_by_email(ctx.pool, email)
    assert user is not None
    return await open_session(ctx, user, "password", ip)
