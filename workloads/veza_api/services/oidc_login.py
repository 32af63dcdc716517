"""Login through an external OpenID Connect provider: authorization code flow with PKCE.

`begin` makes a fresh `state`, `nonce` and code verifier and gives the
provider's authorization URL (with the S256 challenge) and the *pending login*:
those three values in a JWT the API signs for itself (audience
`veza-oidc-login`, ten minutes), which the route keeps in an HttpOnly cookie.
Nothing is stored server-side, so an anonymous start costs no row, and the
callback works only in the browser that started the login: `finish` requires
that cookie and its `state` to match the callback's (a login CSRF brings a
callback without it). It then exchanges the code with the verifier, checks the
ID token (signature from the provider's JWKS, issuer, audience, nonce, expiry),
finds or creates the Veza user and opens a session.

A provider's subject is linked to a user once (`oidc_identities`); on first
login an existing account is linked only if the provider says the email is
verified, so an unverified address cannot take over someone's account.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from veza_core.auth import TokenError, TokenVerifier
from veza_core.web import HttpError

from ..context import Api
from ..oidc_client import OidcClient, OidcError
from . import audit
from .accounts import open_session, verified_login_account

REQUEST_TTL = timedelta(minutes=10)


def client(ctx: Api) -> OidcClient:
    if ctx.oidc is None:
        raise HttpError(404, "oidc_not_configured", "no OIDC provider is configured for this platform")
    return ctx.oidc


AUDIENCE_PENDING = "veza-oidc-login"


@dataclass(frozen=True)
class Pending:
    state: str
    nonce: str
    verifier: str


async def begin(ctx: Api) -> tuple[str, str]:
    """The provider's authorization URL for a new login attempt, and its pending login (signed)."""
    provider = client(ctx)
    state, nonce, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48)
    try:
        url = await provider.authorization_url(state, nonce, verifier)
    except OidcError as exc:
        raise HttpError(502, "oidc_unavailable", "the identity provider cannot be reached") from exc
    pending = ctx.issuer.issue("oidc-login", audience=AUDIENCE_PENDING, ttl=REQUEST_TTL.total_seconds(),
                               state=state, nonce=nonce, verifier=verifier)
    return url, pending


def _pending(ctx: Api, signed: str | None, state: str) -> Pending:
    """The login this browser started, if it is the one the callback answers."""
    verifier = TokenVerifier(ctx.keys, issuer=ctx.issuer.issuer, audience=AUDIENCE_PENDING,
                             algorithms=ctx.settings.jwt_algorithms)
    try:
        claims = verifier.verify(signed or "").claims
    except TokenError as exc:
        raise HttpError(400, "invalid_state", "this browser started no login, or it expired; start again") from exc
    if not secrets.compare_digest(str(claims.get("state", "")), state):
        raise HttpError(400, "invalid_state", "this callback answers another login; start again")
    return Pending(str(claims["state"]), str(claims["nonce"]), str(claims["verifier"]))


async def finish(ctx: Api, *, code: str, state: str, pending_login: str | None, ip: str) -> dict[str, Any]:
    """Veza tokens for the provider's answer to the attempt `state`, started by this browser."""
    provider = client(ctx)
    pending = _pending(ctx, pending_login, state)
    try:
        tokens = await provider.exchange(code, pending.verifier)
        claims = await provider.verify_id_token(str(tokens.get("id_token", "")), pending.nonce)
        if "email" not in claims:
            extra = await provider.userinfo(str(tokens.get("access_token", "")))
            if extra.get("sub") == claims["sub"]:  # OIDC Core 5.3.2: otherwise the answer must not be used
                claims = {**extra, **claims}
    except OidcError as exc:
        await audit.record(ctx.pool, "login.failure", ip=ip, method="oidc", reason=str(exc)[:300])
        raise HttpError(401, "oidc_failed", "the identity provider's answer could not be verified") from exc

    subject = str(claims["sub"])
    user_id = await ctx.pool.fetchval("SELECT user_id FROM oidc_identities WHERE issuer = $1 AND subject = $2",
                                      provider.issuer, subject)
    user = await ctx.pool.fetchrow("SELECT * FROM users WHERE id = $1", user_id) if user_id else None
    if user is None:
        email = claims.get("email")
        if not isinstance(email, str) or "@" not in email or claims.get("email_verified") is not True:
            raise HttpError(403, "oidc_email_unverified", "the identity provider gave no verified email")
        name = str(claims.get("name") or email.split("@", 1)[0])[:100]
        user = await verified_login_account(ctx, email, name, "oidc", ip)
        await ctx.pool.execute("INSERT INTO oidc_identities (issuer, subject, user_id) VALUES ($1, $2, $3)"
                               " ON CONFLICT DO NOTHING", provider.issuer, subject, user["id"])
    if user["disabled"]:
        raise HttpError(401, "account_disabled", "this account is disabled")
    return await open_session(ctx, user, "oidc", ip)
