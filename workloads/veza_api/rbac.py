"""Roles: platform (`admin`), per room (owner > moderator > member), per channel
(broadcaster > listener). Stored in PostgreSQL and read on every check, so a
revoked role stops working at once on the API; tokens for chat and stream carry
a copy (claim `res`) that lives only as long as those short tokens.
"""

from __future__ import annotations

import re
import uuid

import asyncpg
from aiohttp import web

from veza_core.auth import Principal

from .context import api
from .errors import ApiError, forbidden, not_found

PLATFORM_ROLES = ("admin",)
ROOM_ROLES = ("member", "moderator", "owner")  # ascending power
CHANNEL_ROLES = ("listener", "broadcaster")
# Kubernetes object names: what a ChatRoom or StreamChannel can be called.
NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

REQUEST_PRINCIPAL = web.RequestKey("veza_principal", Principal)


def principal(request: web.Request) -> Principal | None:
    """The caller when a valid API token came with the request (set by the auth middleware)."""
    return request.get(REQUEST_PRINCIPAL)


def require_user(request: web.Request) -> Principal:
    who = principal(request)
    if who is None:
        raise ApiError(401, "unauthenticated", "an access token is required",
                       headers={"WWW-Authenticate": 'Bearer realm="veza"'})
    return who


def user_id(who: Principal) -> uuid.UUID:
    return uuid.UUID(who.subject)


async def platform_roles(db: asyncpg.Pool | asyncpg.Connection, uid: uuid.UUID) -> list[str]:
    row = await db.fetchrow("SELECT roles, disabled FROM users WHERE id = $1", uid)
    if row is None or row["disabled"]:
        return []
    return list(row["roles"])


async def is_admin(request: web.Request, who: Principal) -> bool:
    # The database, not the token, decides: an admin demoted a minute ago is no admin.
    return "admin" in await platform_roles(api(request).pool, user_id(who))


async def require_admin(request: web.Request) -> Principal:
    who = require_user(request)
    if not await is_admin(request, who):
        raise forbidden("platform admins only")
    return who


def resource_name(request: web.Request, kind: str = "room") -> str:
    name = request.match_info["name"]
    if not NAME_RE.fullmatch(name):
        raise not_found(kind)
    return name


async def room_role(db: asyncpg.Pool | asyncpg.Connection, room: str, uid: uuid.UUID) -> str | None:
    role = await db.fetchval("SELECT role FROM room_roles WHERE room = $1 AND user_id = $2", room, uid)
    return str(role) if role else None


async def channel_role(db: asyncpg.Pool | asyncpg.Connection, channel: str, uid: uuid.UUID) -> str | None:
    role = await db.fetchval("SELECT role FROM channel_roles WHERE channel = $1 AND user_id = $2", channel, uid)
    return str(role) if role else None


def at_least(role: str | None, minimum: str, ladder: tuple[str, ...]) -> bool:
    return role is not None and ladder.index(role) >= ladder.index(minimum)


async def require_room_role(request: web.Request, room: str, minimum: str) -> Principal:
    """The caller, if a platform admin or holding at least `minimum` in `room`."""
    who = require_user(request)
    db = api(request).pool
    if at_least(await room_role(db, room, user_id(who)), minimum, ROOM_ROLES) or await is_admin(request, who):
        return who
    raise forbidden(f"room {minimum}s only")


async def resource_claims(db: asyncpg.Pool | asyncpg.Connection, uid: uuid.UUID) -> dict[str, str]:
    """The claim `res` of chat and stream tokens: {"room/<name>": role, "channel/<name>": role}."""
    rows = await db.fetch(
        "SELECT 'room/' || room AS res, role FROM room_roles WHERE user_id = $1"
        " UNION ALL SELECT 'channel/' || channel, role FROM channel_roles WHERE user_id = $1", uid)
    return {r["res"]: r["role"] for r in rows}
