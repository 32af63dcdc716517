"""Moderation actions on a room, taken by its moderators and owners (or admins).

Decisions are logged in `room_moderation` and audited; the sanctions they put in force
go to `chat_sanctions` (`services/sanctions.py`), which the chat workers enforce. Nobody can act on a
member of equal or higher rank.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiohttp import web

from veza_core.web import json_response

from .bodies import Action
from .context import API, client_ip
from .errors import forbidden, not_found, parse_uuid, read_json
from .rbac import is_platform_admin, require_room_role, resource_name, user_id
from .services import audit, events, sanctions
from .services.roles import ROOM_ROLES, room_role


def _rank(role: str | None) -> int:
    return ROOM_ROLES.index(role) if role else -1


async def moderate(request: web.Request) -> web.Response:
    room = resource_name(request, "room")
    ctx = request.app[API]
    actor = await require_room_role(request, room, "moderator")  # before the 404: room names stay private
    if not await ctx.pool.fetchval("SELECT 1 FROM rooms WHERE name = $1", room):
        raise not_found("room")
    body = await read_json(request, Action)
    target = parse_uuid(body.user_id, "user")
    if not await is_platform_admin(request, actor):
        mine, theirs = await room_role(ctx.pool, room, user_id(actor)), await room_role(ctx.pool, room, target)
        if _rank(theirs) >= _rank(mine):
            raise forbidden("you cannot moderate someone of your rank or above")
    until = datetime.now(UTC) + timedelta(seconds=body.duration_seconds) if body.duration_seconds else None
    async with ctx.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "INSERT INTO room_moderation (room, user_id, action, reason, actor_id, until)"
            " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, created_at",
            room, target, body.action, body.reason, user_id(actor), until)
        await sanctions.apply(conn, room, target, body.action, until=until, reason=body.reason, by=user_id(actor))
        await audit.record(conn, "room.moderation", actor=actor.subject, subject=str(target), ip=client_ip(request),
                           room=room, action=body.action, reason=body.reason, until=until)
    await events.moderation_decided(ctx, room, row["id"], action=body.action, user=target, actor=actor.subject,
                                    reason=body.reason, until=until)
    if body.action == "ban":  # whatever their stored role, a banned user is out of the room
        await events.membership_changed(ctx, room, target, None)
    return json_response({"id": row["id"], "room": room, "user_id": str(target), "action": body.action,
                          "reason": body.reason, "until": until.isoformat() if until else None,
                          "created_at": row["created_at"].isoformat()}, status=201)


async def list_actions(request: web.Request) -> web.Response:
    room = resource_name(request, "room")
    await require_room_role(request, room, "moderator")
    rows = await request.app[API].lists.fetch(
        "SELECT * FROM room_moderation WHERE room = $1 ORDER BY id DESC LIMIT 200", room)
    return json_response({"actions": [
        {"id": r["id"], "room": r["room"], "user_id": str(r["user_id"]), "action": r["action"],
         "reason": r["reason"], "until": r["until"].isoformat() if r["until"] else None,
         "created_at": r["created_at"].isoformat()} for r in rows]})
