"""Users: the account record, the caller's profile, and admin management."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from aiohttp import web
from pydantic import BaseModel, Field

from . import audit
from .context import api
from .errors import ApiError, not_found, parse_uuid, read_json
from .rbac import PLATFORM_ROLES, require_admin, require_user, resource_claims, user_id
from .sessions import revoke_user_sessions

USER_COLUMNS = "id, email, display_name, roles, disabled, created_at"


def user_json(row: asyncpg.Record) -> dict[str, Any]:
    return {"id": str(row["id"]), "email": row["email"], "display_name": row["display_name"],
            "roles": list(row["roles"]), "disabled": row["disabled"], "created_at": row["created_at"].isoformat()}


def normalise_email(email: str) -> str:
    return email.strip().lower()


async def find_by_email(db: asyncpg.Pool | asyncpg.Connection, email: str) -> asyncpg.Record | None:
    return await db.fetchrow(f"SELECT {USER_COLUMNS}, password_hash FROM users WHERE email = $1",  # noqa: S608
                             normalise_email(email))


async def create_user(db: asyncpg.Pool | asyncpg.Connection, *, email: str, display_name: str,
                      password_hash: str | None, bootstrap_admin: str | None) -> asyncpg.Record | None:
    """The new user, or None when the email is taken."""
    email = normalise_email(email)
    roles = ["admin"] if bootstrap_admin and email == normalise_email(bootstrap_admin) else []
    sql = ("INSERT INTO users (email, display_name, password_hash, roles) VALUES ($1, $2, $3, $4)"
           " ON CONFLICT (email) DO NOTHING RETURNING ")
    return await db.fetchrow(sql + USER_COLUMNS, email, display_name, password_hash, roles)


async def get_me(request: web.Request) -> web.Response:
    who = require_user(request)
    db = api(request).pool
    row = await db.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1", user_id(who))  # noqa: S608
    if row is None:
        raise not_found("user")
    return web.json_response({**user_json(row), "resources": await resource_claims(db, row["id"])})


class ProfileUpdate(BaseModel):
    display_name: str = Field(min_length=1, max_length=100)


async def patch_me(request: web.Request) -> web.Response:
    who = require_user(request)
    body = await read_json(request, ProfileUpdate)
    row = await api(request).pool.fetchrow(
        f"UPDATE users SET display_name = $2, updated_at = now() WHERE id = $1 RETURNING {USER_COLUMNS}",  # noqa: S608
        user_id(who), body.display_name.strip() or body.display_name)
    if row is None:
        raise not_found("user")
    return web.json_response(user_json(row))


async def list_users(request: web.Request) -> web.Response:
    """GET /api/v1/admin/users?after=<id>&limit=&email= (ordered by id, keyset pages)."""
    await require_admin(request)
    try:
        limit = min(max(int(request.query.get("limit", "50")), 1), 500)
    except ValueError as exc:
        raise ApiError(400, "invalid_query", "limit must be an integer") from exc
    after = parse_uuid(request.query["after"], "after") if "after" in request.query else uuid.UUID(int=0)
    email = request.query.get("email")
    rows = await api(request).pool.fetch(
        f"SELECT {USER_COLUMNS} FROM users WHERE id > $1 AND ($2::text IS NULL OR email = lower($2))"  # noqa: S608
        " ORDER BY id LIMIT $3", after, email, limit)
    users = [user_json(r) for r in rows]
    return web.json_response({"users": users, "next_after": users[-1]["id"] if len(users) == limit else None})


class UserUpdate(BaseModel):
    roles: list[str] | None = Field(None, max_length=len(PLATFORM_ROLES))
    disabled: bool | None = None


async def patch_user(request: web.Request) -> web.Response:
    """PATCH /api/v1/admin/users/{id}: platform roles and the disabled flag."""
    admin = await require_admin(request)
    target = parse_uuid(request.match_info["id"], "user")
    body = await read_json(request, UserUpdate)
    if body.roles is not None and not set(body.roles) <= set(PLATFORM_ROLES):
        raise ApiError(422, "invalid_role", f"platform roles are {', '.join(PLATFORM_ROLES)}")
    ctx = api(request)
    async with ctx.pool.acquire() as conn, conn.transaction():
        before = await conn.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1 FOR UPDATE", target)  # noqa: S608
        if before is None:
            raise not_found("user")
        roles = sorted(set(body.roles)) if body.roles is not None else list(before["roles"])
        disabled = body.disabled if body.disabled is not None else before["disabled"]
        row = await conn.fetchrow(
            f"UPDATE users SET roles = $2, disabled = $3, updated_at = now() WHERE id = $1 RETURNING {USER_COLUMNS}",  # noqa: S608
            target, roles, disabled)
        for role in set(roles) - set(before["roles"]):
            await audit.record(conn, "role.granted", actor=admin.subject, subject=str(target), request=request,
                               role=role, scope="platform")
        for role in set(before["roles"]) - set(roles):
            await audit.record(conn, "role.revoked", actor=admin.subject, subject=str(target), request=request,
                               role=role, scope="platform")
        if disabled != before["disabled"]:
            await audit.record(conn, "user.disabled" if disabled else "user.enabled", actor=admin.subject,
                               subject=str(target), request=request)
    if disabled and not before["disabled"]:
        await revoke_user_sessions(ctx, target, "user disabled")
    return web.json_response(user_json(row))
