"""Token issuance: API access tokens, short tokens for the chat and stream
services, and auditing of signing-key rotations.

Keys come from the Secret the operator mounts (`signing-keys.json` + `jwks.json`);
`veza_core.keys.KeySet` reloads them when the files change. The first signing
key signs; every key in `jwks.json` verifies, which gives the rotation overlap.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from veza_core.auth import AUDIENCE_API, AUDIENCE_CHAT, AUDIENCE_STREAM, Principal
from veza_core.web import HttpError

from ..context import Api
from . import audit
from .roles import platform_roles, resource_claims

SERVICE_AUDIENCES = (AUDIENCE_CHAT, AUDIENCE_STREAM)


async def note_active_key(ctx: Api) -> None:
    """Audit `key.rotated` the first time any replica signs with a new key."""
    kid, _ = ctx.keys.active_signing_key()
    if kid == ctx.active_kid:
        return
    inserted = await ctx.pool.fetchval(
        "INSERT INTO signing_keys_seen (kid) VALUES ($1) ON CONFLICT DO NOTHING RETURNING kid", kid)
    if inserted:
        await audit.record(ctx.pool, "key.rotated", subject=kid, previous=ctx.active_kid)
    ctx.active_kid = kid


async def access_token(ctx: Api, user: asyncpg.Record, session_id: uuid.UUID) -> str:
    await note_active_key(ctx)
    return ctx.issuer.issue(str(user["id"]), audience=AUDIENCE_API, ttl=ctx.settings.access_ttl_seconds,
                            name=user["display_name"], roles=list(user["roles"]), sid=str(session_id))


async def token_pair(ctx: Api, user: asyncpg.Record, session_id: uuid.UUID, refresh_token: str) -> dict[str, Any]:
    return {"access_token": await access_token(ctx, user, session_id), "token_type": "Bearer",
            "expires_in": ctx.settings.access_ttl_seconds, "refresh_token": refresh_token,
            "user_id": str(user["id"])}


async def service_token(ctx: Api, who: Principal, audience: str) -> dict[str, Any]:
    """A short token for the chat or stream service.

    It carries the caller's platform roles (`roles`) and per-room / per-channel
    roles (`res`), read from the database now, so it is at most a few minutes stale.
    """
    if audience not in SERVICE_AUDIENCES:
        raise HttpError(422, "invalid_audience", f"audience must be one of {', '.join(SERVICE_AUDIENCES)}")
    uid = uuid.UUID(who.subject)
    roles = await platform_roles(ctx.pool, uid)
    res = await resource_claims(ctx.pool, uid)
    await note_active_key(ctx)
    ttl = ctx.settings.service_token_ttl_seconds
    # The session lets the chat and stream workers close this token's sockets when the session ends.
    session = {"sid": who.claims["sid"]} if isinstance(who.claims.get("sid"), str) else {}
    token = ctx.issuer.issue(who.subject, audience=audience, ttl=ttl, name=who.name, roles=roles, res=res, **session)
    return {"token": token, "audience": audience, "expires_in": ttl}
