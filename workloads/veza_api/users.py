"""Routes of users: the caller's profile, and admin management of accounts."""

from __future__ import annotations

import uuid

from aiohttp import web

from veza_core.web import HttpError, json_response

from .bodies import ProfileUpdate, UserUpdate
from .context import API, client_ip
from .errors import not_found, parse_uuid, read_json
from .rbac import require_admin, require_user, user_id
from .services import audit
from .services.roles import PLATFORM_ROLES, resource_claims
from .services.sessions import revoke_user_sessions
from .services.users import USER_COLUMNS, find_by_id, user_json


async def get_me(request: web.Request) -> web.Response:
    who = require_user(request)
    db = request.app[API].pool
    row = await find_by_id(db, user_id(who))
    if row is None:
        raise not_found("user")
    return json_response({**user_json(row), "resources": await resource_claims(db, row["id"])})


async def patch_me(request: web.Request) -> web.Response:
    who = require_user(request)
    body = await read_json(request, ProfileUpdate)
    row = await request.app[API].pool.fetchrow(
        f"UPDATE users SET display_name = $2, updated_at = now() WHERE id = $1 RETURNING {USER_COLUMNS}",  # noqa: S608
        user_id(who), body.display_name.strip() or body.display_name)
    if row is None:
        raise not_found("user")
    return json_response(user_json(row))


async def list_users(request: web.Request) -> web.Response:
    """GET /api/v1/admin/users?after=<id>&limit=&email= (ordered by id, keyset pages)."""
    await require_admin(request)
    try:
        limit = min(max(int(request.query.get("limit", "50")), 1), 500)
    except ValueError as exc:
        raise HttpError(400, "invalid_query", "limit must be an integer") from exc
    after = parse_uuid(request.query["after"], "after") if "after" in request.query else uuid.UUID(int=0)
    email = request.query.get("email")
    rows = await request.app[API].lists.fetch(
        f"SELECT {USER_COLUMNS} FROM users WHERE id > $1 AND ($2::text IS NULL OR email = lower($2))"  # noqa: S608
        " ORDER BY id LIMIT $3", after, email, limit)
    users = [user_json(r) for r in rows]
    return json_response({"users": users, "next_after": users[-1]["id"] if len(users) == limit else None})


async def patch_user(request: web.Request) -> web.Response:
    """PATCH /api/v1/admin/users/{id}: platform roles and the disabled flag."""
    admin = await require_admin(request)
    target = parse_uuid(request.match_info["id"], "user")
    body = await read_json(request, UserUpdate)
    if body.roles is not None and not set(body.roles) <= set(PLATFORM_ROLES):
        raise HttpError(422, "invalid_role", f"platform roles are {', '.join(PLATFORM_ROLES)}")
    ctx = request.app[API]
    ip = client_ip(request)
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
            await audit.record(conn, "role.granted", actor=admin.subject, subject=str(target), ip=ip,
                               role=role, scope="platform")
        for role in set(before["roles"]) - set(roles):
            await audit.record(conn, "role.revoked", actor=admin.subject, subject=str(target), ip=ip,
                               role=role, scope="platform")
        if disabled != before["disabled"]:
            await audit.record(conn, "user.disabled" if disabled else "user.enabled", actor=admin.subject,
                               subject=str(target), ip=ip)
    if disabled and not before["disabled"]:
        await revoke_user_sessions(ctx, target, "user disabled", "disabled")
    return json_response(user_json(row))
