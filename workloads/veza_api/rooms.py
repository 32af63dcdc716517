"""Rooms and channels: the API's view of the ChatRoom and StreamChannel resources.

The operator (or `veza up`) declares them with the admin PUT endpoints; users
list them. Live figures come from Redis keys that the chat and stream workers
maintain (a documented contract, see docs/api.md):

- ``veza:{platform}:room:{room}:members`` — a hash (or set) with one entry per
  connected member; its length is the live member count;
- ``veza:{platform}:channel:{channel}:now_playing`` — a hash describing the
  current track (track_id, title, started_at, ...).

When Redis is unreachable those figures are null, and the rest still answers.
"""

from __future__ import annotations

import json
import time
from typing import Any, NamedTuple

import asyncpg
from aiohttp import web
from redis.exceptions import RedisError, ResponseError

from veza_core import directory
from veza_core.auth import Principal
from veza_core.web import HttpError, json_response

from .bodies import Declaration, RoleGrant
from .context import API, Api, MemberCounts, client_ip
from .errors import forbidden, not_found, parse_uuid, read_json
from .rbac import (
    OPERATOR,
    is_platform_admin,
    principal,
    require_admin,
    require_directory_writer,
    require_room_role,
    resource_name,
    user_id,
)
from .services import audit, events
from .services.roles import CHANNEL_ROLES, ROOM_ROLES, at_least, channel_role, room_role
from .services.room_load import ROOM_LOAD

KINDS = {"room": ("rooms", "room_roles", "room", ROOM_ROLES),
         "channel": ("channels", "channel_roles", "channel", CHANNEL_ROLES)}

MEMBER_COUNT_SECONDS = 1.0  # how long a room's member count is reused: presence is a moving figure anyway
MEMBER_COUNTS_KEPT = 10_000


async def _visible(request: web.Request, kind: str, row: asyncpg.Record | None) -> asyncpg.Record:
    """The row if the caller may see it: public, or private and the caller has a role or is admin."""
    if row is None:
        raise not_found(kind)
    if row["visibility"] == "public":
        return row
    who = principal(request)
    if who is not None:
        ctx = request.app[API]
        role = await (room_role if kind == "room" else channel_role)(ctx.pool, row["name"], user_id(who))
        if role is not None or await is_platform_admin(request, who):
            return row
    raise not_found(kind)  # a private resource is not even confirmed to exist


class ListQuery(NamedTuple):
    """A list's statement for anonymous callers (no parameter), and for a user (their id as $1).

    Two statements, not one taking a user id or NULL: PostgreSQL planned that one anew at every execution (its plan
    for NULL folds the user's part away and looks cheaper than the generic plan, so the generic plan never won),
    which was half the list's database CPU. Each of these is planned once per connection and reused
    (tests/api/test_list_plans.py)."""

    public: str
    user: str


def _list_query(select: str, kind: str) -> ListQuery:
    """`select` (over the resource table as `t`) restricted to what the caller sees, by name: what is public; for a
    user also what they have a role in, and everything for a platform admin (by the users table, as
    services.roles.is_admin reads it). Fixed names only."""
    _, roles_table, column, _ = KINDS[kind]
    seen_by_user = (f"t.visibility = 'public' OR EXISTS (SELECT 1 FROM {roles_table} r WHERE r.{column} = t.name"  # noqa: S608
                    " AND r.user_id = $1) OR EXISTS (SELECT 1 FROM users u WHERE u.id = $1 AND NOT u.disabled"
                    " AND 'admin' = ANY(u.roles))")
    return ListQuery(f"{select} WHERE t.visibility = 'public' ORDER BY t.name",
                     f"{select} WHERE {seen_by_user} ORDER BY t.name")


async def _list(request: web.Request, query: ListQuery) -> list[asyncpg.Record]:
    who = principal(request)
    lists = request.app[API].lists
    return await (lists.fetch(query.public) if who is None else lists.fetch(query.user, user_id(who)))


CHANNEL_LIST = _list_query("SELECT * FROM channels t", "channel")


async def member_counts(ctx: Api, rooms: list[str]) -> dict[str, int | None]:
    """Connected members per room, as the chat workers keep them in Redis; a count fetched less than
    MEMBER_COUNT_SECONDS ago is reused (lists are read far more often than presence changes what they say), and the
    counts of the same rooms as the last call are reused whole while the oldest of them is (a busy list route asks
    for the same rooms at every request)."""
    now = time.monotonic()
    snapshot = ctx.member_count_snapshot
    if snapshot is not None and now - snapshot.fetched <= MEMBER_COUNT_SECONDS and snapshot.rooms == rooms:
        return snapshot.counts
    kept = ctx.member_counts
    stale = [room for room in rooms if room not in kept or now - kept[room][0] > MEMBER_COUNT_SECONDS]
    fresh = await _member_counts(ctx, stale) if stale else {}
    counts = {room: fresh[room] if room in fresh else kept[room][1] for room in rooms}
    oldest = min((now if room in fresh else kept[room][0] for room in rooms), default=now)
    if len(kept) + len(fresh) > MEMBER_COUNTS_KEPT:  # rooms come and go: start over rather than grow
        kept.clear()
    kept.update((room, (now, count)) for room, count in fresh.items() if count is not None)
    if None not in counts.values():  # an unknown count (Redis unreachable) is asked for again by the next call
        ctx.member_count_snapshot = MemberCounts(rooms, oldest, counts)
    return counts


async def _member_counts(ctx: Api, rooms: list[str]) -> dict[str, int | None]:
    async def from_redis() -> dict[str, int | None]:
        counts: dict[str, int | None] = {}
        async with ctx.redis.pipeline(transaction=False) as pipe:
            for room in rooms:
                pipe.hlen(ctx.redis_key("room", room, "members"))
            results = await pipe.execute(raise_on_error=False)
        for room, result in zip(rooms, results, strict=True):
            if isinstance(result, ResponseError):  # WRONGTYPE: the chat worker keeps a set
                result = await ctx.redis.scard(ctx.redis_key("room", room, "members"))
            elif isinstance(result, Exception):
                raise result
            counts[room] = int(result)
        return counts

    async def unknown() -> dict[str, int | None]:
        return dict.fromkeys(rooms)

    try:
        return await ctx.redis_breaker.call(from_redis, unknown)
    except RedisError:
        return await unknown()


async def now_playing(ctx: Api, channel: str) -> dict[str, str] | None:
    async def from_redis() -> dict[str, str] | None:
        raw: dict[bytes, bytes] = await ctx.redis.hgetall(  # type: ignore[assignment]
            ctx.redis_key("channel", channel, "now_playing"))
        return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw.items()} or None

    async def unknown() -> dict[str, str] | None:
        return None

    try:
        return await ctx.redis_breaker.call(from_redis, unknown)
    except RedisError:
        return None


def _json(row: asyncpg.Record, **extra: Any) -> dict[str, Any]:
    return {"name": row["name"], "title": row["title"], "visibility": row["visibility"],
            "updated_at": row["updated_at"].isoformat(), **extra}


def _declared_json(kind: str, row: asyncpg.Record) -> dict[str, Any]:
    """A row as admins and the operator see it: rooms with their listen-along channel (users see it only when
    the channel is public, `_room_json`), placement and worker spec (users never), channels with their
    renditions."""
    if kind == "room":
        return _json(row, channel=row["channel"], placement=row["placement"],
                     spec=None if row["spec"] is None else json.loads(row["spec"]))
    return _json(row, renditions=directory.renditions_of(row))


async def _public_channels(ctx: Api) -> set[str]:
    return {r["name"] for r in await ctx.pool.fetch("SELECT name FROM channels WHERE visibility = 'public'")}


def _room_json(row: asyncpg.Record, public_channels: set[str], **extra: Any) -> dict[str, Any]:
    """A room as users see it: its listen-along channel only when that channel is public (a private
    channel's name is not told to everyone who sees the room)."""
    return _json(row, **extra, channel=row["channel"] if row["channel"] in public_channels else None)


async def _my_role(request: web.Request, kind: str, name: str) -> str | None:
    who = principal(request)
    if who is None:
        return None
    return await (room_role if kind == "room" else channel_role)(request.app[API].pool, name, user_id(who))


# The rooms a caller sees with their listen-along channel only when it is public, in one query and only the columns
# the list shows: the hottest read of the API.
ROOM_LIST = _list_query("SELECT t.name, t.title, t.visibility, t.updated_at, c.name AS channel FROM rooms t"
                        " LEFT JOIN channels c ON c.name = t.channel AND c.visibility = 'public'", "room")


async def list_rooms(request: web.Request) -> web.Response:
    """GET /api/v1/rooms: public rooms for anyone; private ones for their members and admins."""
    ctx = request.app[API]
    rows = await _list(request, ROOM_LIST)
    counts = await member_counts(ctx, [r["name"] for r in rows])
    return json_response({"rooms": [
        {"name": r["name"], "title": r["title"], "visibility": r["visibility"],
         "updated_at": r["updated_at"], "member_count": counts[r["name"]], "channel": r["channel"]}
        for r in rows]})


async def get_room(request: web.Request) -> web.Response:
    name = resource_name(request, "room")
    row = await _visible(request, "room", await request.app[API].pool.fetchrow("SELECT * FROM rooms WHERE name = $1",
                                                                           name))
    counts = await member_counts(request.app[API], [name])
    public = await _public_channels(request.app[API])
    return json_response(_room_json(row, public, member_count=counts[name],
                                    your_role=await _my_role(request, "room", name)))


async def list_channels(request: web.Request) -> web.Response:
    rows = await _list(request, CHANNEL_LIST)
    return json_response({"channels": [_declared_json("channel", r) for r in rows]})


async def get_channel(request: web.Request) -> web.Response:
    name = resource_name(request, "channel")
    ctx = request.app[API]
    row = await _visible(request, "channel", await ctx.pool.fetchrow("SELECT * FROM channels WHERE name = $1", name))
    return json_response(_declared_json("channel", row) | {
        "now_playing": await now_playing(ctx, name), "your_role": await _my_role(request, "channel", name)})


async def _set_role(conn: asyncpg.Connection, request: web.Request, actor: Principal | None, kind: str, name: str,
                    target: str, role: str | None) -> bool:
    """Grant, change or (role None) revoke one user's role on a room or channel, audited; True if it changed.

    `actor` None: the operator (the directory credential), which is no user.
    """
    _, roles_table, column, ladder = KINDS[kind]
    uid = parse_uuid(target, "user")
    if role is not None and role not in ladder:
        raise HttpError(422, "invalid_role", f"{kind} roles are {', '.join(ladder)}")
    before = await conn.fetchval(
        f"SELECT role FROM {roles_table} WHERE {column} = $1 AND user_id = $2", name, uid)  # noqa: S608
    if before == role:
        return False
    if role is None:
        await conn.execute(f"DELETE FROM {roles_table} WHERE {column} = $1 AND user_id = $2", name, uid)  # noqa: S608
    else:
        await conn.execute(
            f"INSERT INTO {roles_table} ({column}, user_id, role) VALUES ($1, $2, $3)"  # noqa: S608
            f" ON CONFLICT ({column}, user_id) DO UPDATE SET role = excluded.role, granted_at = now()",
            name, uid, role)
    by, actor_id = _by(actor), actor.subject if actor is not None else None
    if before is not None:
        await audit.record(conn, "role.revoked", actor=actor_id, subject=str(uid), ip=client_ip(request),
                           scope=f"{kind}/{name}", role=before, **by)
    if role is not None:
        await audit.record(conn, "role.granted", actor=actor_id, subject=str(uid), ip=client_ip(request),
                           scope=f"{kind}/{name}", role=role, **by)
    return True


def _by(actor: Principal | None) -> dict[str, str]:
    """The audit detail naming the operator when it acted (its credential is no user: no actor id)."""
    return {} if actor is not None else {"by": OPERATOR}


async def _announce(ctx: Api, kind: str, name: str, changes: dict[str, str | None]) -> None:
    """Room role changes, once committed, for the chat workers (channels have no such subscriber)."""
    if kind == "room":
        for uid, role in changes.items():
            await events.membership_changed(ctx, name, uid, role)


def declare(kind: str) -> Any:
    _, roles_table, column, _ = KINDS[kind]

    async def handler(request: web.Request) -> web.Response:
        """PUT /api/v1/admin/{rooms|channels}/{name}: create or update from the custom resource."""
        admin = await require_directory_writer(request)
        name = resource_name(request, kind)
        body = await read_json(request, Declaration)
        if kind == "channel" and body.channel is not None:
            raise HttpError(422, "invalid_body", "only rooms are bound to a channel")
        if kind == "room" and body.renditions is not None:
            raise HttpError(422, "invalid_body", "only channels have renditions")
        if kind == "channel" and (body.spec is not None or body.placement is not None):
            raise HttpError(422, "invalid_body", "only rooms have a worker spec and a placement")
        ctx = request.app[API]
        changes: dict[str, str | None] = {}
        async with ctx.pool.acquire() as conn, conn.transaction():
            row = await directory.declare(conn, kind, name, body.title, body.visibility)  # type: ignore[arg-type]
            if kind == "room":
                await directory.bind_channel(conn, name, body.channel)
                await _place(conn, name, body.spec, body.placement)
            else:
                await directory.set_renditions(conn, name, None if body.renditions is None else
                                               [r.model_dump() for r in body.renditions])
            row = await conn.fetchrow(f"SELECT *, $2::bool AS created FROM {KINDS[kind][0]} WHERE name = $1",  # noqa: S608
                                      name, row["created"])
            if body.members is not None:
                wanted = {str(parse_uuid(m.user, "user")): m.role for m in body.members}
                current = await conn.fetch(f"SELECT user_id FROM {roles_table} WHERE {column} = $1", name)  # noqa: S608
                for gone in {str(r["user_id"]) for r in current} - wanted.keys():
                    if await _set_role(conn, request, admin, kind, name, gone, None):
                        changes[gone] = None
                for uid, role in wanted.items():
                    if await _set_role(conn, request, admin, kind, name, uid, role):
                        changes[uid] = role
        await _announce(ctx, kind, name, changes)
        await events.lifecycle(ctx, kind, name, "created" if row["created"] else "updated", row["title"],
                               row["visibility"])
        return json_response(_declared_json(kind, row), status=201 if row["created"] else 200)

    return handler


async def _place(conn: asyncpg.Connection, room: str, spec: dict[str, Any] | None, placement: str | None) -> None:
    """Record where the room's workers run and the spec a pool worker serves it with (None: leave as stored)."""
    if spec is not None or placement is not None:
        await conn.execute("UPDATE rooms SET spec = coalesce($2::jsonb, spec), placement = coalesce($3, placement)"
                           " WHERE name = $1", room, None if spec is None else json.dumps(spec), placement)


def undeclare(kind: str) -> Any:
    table = KINDS[kind][0]

    async def handler(request: web.Request) -> web.Response:
        admin = await require_directory_writer(request)
        name = resource_name(request, kind)
        ctx = request.app[API]
        deleted = await ctx.pool.fetchval(f"DELETE FROM {table} WHERE name = $1 RETURNING name", name)  # noqa: S608
        if deleted is None:
            raise not_found(kind)
        await audit.record(ctx.pool, f"{kind}.deleted", actor=admin.subject if admin is not None else None,
                           subject=f"{kind}/{name}", ip=client_ip(request), **_by(admin))
        await events.lifecycle(ctx, kind, name, "deleted")
        return web.Response(status=204)

    return handler


def declared(kind: str) -> Any:
    table = KINDS[kind][0]

    async def handler(request: web.Request) -> web.Response:
        """GET /api/v1/admin/{rooms|channels}: every row, private ones included (what the operator prunes from)."""
        await require_directory_writer(request)
        rows = await request.app[API].pool.fetch(f"SELECT * FROM {table} ORDER BY name")  # noqa: S608 - fixed names
        return json_response({table: [_declared_json(kind, r) for r in rows]})

    return handler


async def _require_exists(ctx: Api, kind: str, name: str) -> None:
    if not await ctx.pool.fetchval(f"SELECT 1 FROM {KINDS[kind][0]} WHERE name = $1", name):  # noqa: S608
        raise not_found(kind)


def member_role(kind: str, grant: bool) -> Any:
    async def handler(request: web.Request) -> web.Response:
        """PUT/DELETE /api/v1/{rooms|channels}/{name}/members/{user_id}.

        Rooms: owners manage every role, moderators add and remove plain members.
        Channels: platform admins only.
        """
        name = resource_name(request, kind)
        ctx = request.app[API]
        # Who may act comes first: answering 404 before 401/403 would tell anyone which private
        # rooms exist.
        if kind == "channel":
            actor = await require_admin(request)
        else:
            actor = await require_room_role(request, name, "moderator")
        await _require_exists(ctx, kind, name)
        role = (await read_json(request, RoleGrant)).role if grant else None
        target = request.match_info["user_id"]
        if kind == "room":
            mine = await room_role(ctx.pool, name, user_id(actor))
            if not at_least(mine, "owner", ROOM_ROLES) and not await is_platform_admin(request, actor):
                theirs = await room_role(ctx.pool, name, parse_uuid(target, "user"))
                if role not in (None, "member") or theirs not in (None, "member"):
                    raise forbidden("moderators manage plain members only")
        async with ctx.pool.acquire() as conn, conn.transaction():
            changed = await _set_role(conn, request, actor, kind, name, target, role)
        if changed:
            await _announce(ctx, kind, name, {str(parse_uuid(target, "user")): role})
        return web.Response(status=204)

    return handler


async def room_load(request: web.Request) -> web.Response:
    """GET /api/v1/admin/rooms/load: connections and messages per second of every room a chat worker reported
    within the window, summed over its replicas (what the operator places rooms by)."""
    await require_directory_writer(request)
    load = request.app[ROOM_LOAD]
    return json_response({"rooms": [{"name": r.name, "connections": r.connections,
                                     "messages_per_second": r.messages_per_second, "replicas": r.replicas}
                                    for r in load.rooms()],
                          "window_seconds": load.window})
