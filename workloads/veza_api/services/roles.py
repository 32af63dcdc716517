"""Roles: platform (`admin`), per room (owner > moderator > member), per channel
(broadcaster > listener). Stored in PostgreSQL and read on every check, so a
revoked role stops working at once on the API; tokens for chat and stream carry
a copy (claim `res`) that lives only as long as those short tokens.
"""

from __future__ import annotations

import re
import uuid

import asyncpg

PLATFORM_ROLES = ("admin",)
ROOM_ROLES = ("member", "moderator", "owner")  # ascending power
CHANNEL_ROLES = ("listener", "broadcaster")
# Kubernetes object names: what a ChatRoom or StreamChannel can be called.
NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


async def platform_roles(db: asyncpg.Pool | asyncpg.Connection, uid: uuid.UUID) -> list[str]:
    row = await db.fetchrow("SELECT roles, disabled FROM users WHERE id = $1", uid)
    if row is None or row["disabled"]:
        return []
    return list(row["roles"])


async def is_admin(db: asyncpg.Pool | asyncpg.Connection, uid: uuid.UUID) -> bool:
    # The database, not the token, decides: an admin demoted a minute ago is no admin.
    return "admin" in await platform_roles(db, uid)


async def room_role(db: asyncpg.Pool | asyncpg.Connection, room: str, uid: uuid.UUID) -> str | None:
    role = await db.fetchval("SELECT role FROM room_roles WHERE room = $1 AND user_id = $2", room, uid)
    return str(role) if role else None


async def channel_role(db: asyncpg.Pool | asyncpg.Connection, channel: str, uid: uuid.UUID) -> str | None:
    role = await db.fetchval("SELECT role FROM channel_roles WHERE channel = $1 AND user_id = $2", channel, uid)
    return str(role) if role else None


def at_least(role: str | None, minimum: str, ladder: tuple[str, ...]) -> bool:
    return role is not None and ladder.index(role) >= ladder.index(minimum)


async def resource_claims(db: asyncpg.Pool | asyncpg.Connection, uid: uuid.UUID) -> dict[str, str]:
    """The claim `res` of chat and stream tokens: {"room/<name>": role, "channel/<name>": role}."""
    rows = await db.fetch(
        "SELECT 'room/' || room AS res, role FROM room_roles WHERE user_id = $1"
        " UNION ALL SELECT 'channel/' || channel, role FROM channel_roles WHERE user_id = $1", uid)
    return {r["res"]: r["role"] for r in rows}
