"""Rooms and channels: declared by admins (the operator), listed with live figures from Redis, roles enforced."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.support.api import ISSUER, PASSWORD, ApiServer, Client
from tests.support.chat import Chat, ChatClient
from veza_core.auth import TokenIssuer
from veza_core.keys import KeySet, generate_signing_key
from veza_local.services import NatsService, RedisService


def _name() -> str:
    return f"r-{uuid.uuid4().hex[:8]}"


async def test_a_member_count_is_reused_for_a_second(client: Client, admin: Client, api_server: ApiServer,
                                                     redis: RedisService) -> None:
    room = _name()
    assert (await admin.put(f"/api/v1/admin/rooms/{room}", {"title": "Busy"})).status == 201
    key = f"veza:{api_server.settings.platform}:room:{room}:members"

    async def count() -> int:
        return next(r["member_count"] for r in (await client.get("/api/v1/rooms")).body["rooms"] if r["name"] == room)

    r = aioredis.from_url(redis.url)
    try:
        await r.hset(key, mapping={"u1": "1", "u2": "1"})
        assert await count() == 2
        await r.hset(key, "u3", "1")
        assert await count() == 2, "read again within the second: the same figure, without asking Redis"
        await asyncio.sleep(1.1)
        assert await count() == 3
    finally:
        await r.aclose()


async def test_a_room_declared_between_two_lists_is_counted_at_once(client: Client, admin: Client,
                                                                    api_server: ApiServer, redis: RedisService) -> None:
    """The counts of the last list are reused whole only for the same rooms: a list with one more asks for its."""
    first, second = _name(), _name()

    async def counts() -> dict[str, int]:
        return {r["name"]: r["member_count"] for r in (await client.get("/api/v1/rooms")).body["rooms"]}

    r = aioredis.from_url(redis.url)
    try:
        for room, members in ((first, 1), (second, 2)):
            await r.hset(f"veza:{api_server.settings.platform}:room:{room}:members",
                         mapping={f"u{i}": "1" for i in range(members)})
        assert (await admin.put(f"/api/v1/admin/rooms/{first}", {"title": "First"})).status == 201
        assert (await counts())[first] == 1
        assert (await admin.put(f"/api/v1/admin/rooms/{second}", {"title": "Second"})).status == 201
        listed = await counts()
        assert (listed[first], listed[second]) == (1, 2)
    finally:
        await r.aclose()


async def test_declare_list_and_count_members(client: Client, admin: Client, api_server: ApiServer,
                                              redis: RedisService) -> None:
    public, private = _name(), _name()
    made = await admin.put(f"/api/v1/admin/rooms/{public}", {"title": "Lobby"})
    assert made.status == 201 and made.body["visibility"] == "public"
    updated = await admin.put(f"/api/v1/admin/rooms/{public}", {"title": "The Lobby"})
    assert updated.status == 200 and updated.body["title"] == "The Lobby"
    member = await client.register_and_login()
    assert (await admin.put(f"/api/v1/admin/rooms/{private}", {
        "title": "Staff", "visibility": "private",
        "members": [{"user": member["user_id"], "role": "owner"}]})).status == 201

    # The chat worker's contract: one hash field per connected member.
    r = aioredis.from_url(redis.url)
    try:
        await r.hset(f"veza:{api_server.settings.platform}:room:{public}:members",
                     mapping={"u1": "1", "u2": "1", "u3": "1"})
        await r.sadd(f"veza:{api_server.settings.platform}:room:{private}:members", "u1")
    finally:
        await r.aclose()

    anonymous = {room["name"]: room for room in (await client.get("/api/v1/rooms")).body["rooms"]}
    assert anonymous[public]["member_count"] == 3 and private not in anonymous
    assert {public, private} <= {room["name"] for room in (await admin.get("/api/v1/rooms")).body["rooms"]}, \
        "a platform admin lists every room"
    assert (await client.get(f"/api/v1/rooms/{private}")).status == 404

    outsider = client.as_user((await client.register_and_login())["access_token"])
    assert private not in {room["name"] for room in (await outsider.get("/api/v1/rooms")).body["rooms"]}
    assert (await outsider.get(f"/api/v1/rooms/{private}")).status == 404

    owner = client.as_user(member["access_token"])
    mine = {room["name"]: room for room in (await owner.get("/api/v1/rooms")).body["rooms"]}
    assert mine[private]["member_count"] == 1
    detail = await owner.get(f"/api/v1/rooms/{private}")
    assert detail.status == 200 and detail.body["your_role"] == "owner"

    assert (await admin.delete(f"/api/v1/admin/rooms/{public}")).status == 204
    assert (await client.get(f"/api/v1/rooms/{public}")).status == 404


async def test_only_admins_declare_rooms(client: Client) -> None:
    user = client.as_user((await client.register_and_login())["access_token"])
    denied = await user.put("/api/v1/admin/rooms/mine", {"title": "Mine"})
    assert denied.status == 403 and denied.body["error"]["code"] == "forbidden"
    anonymous = await client.put("/api/v1/admin/rooms/mine", {"title": "Mine"})
    assert anonymous.status == 401


async def test_room_roles_and_moderation(client: Client, admin: Client) -> None:
    room = _name()
    owner, moderator, member, outsider = [await client.register_and_login() for _ in range(4)]
    await admin.put(f"/api/v1/admin/rooms/{room}", {"title": "Room", "members": [
        {"user": owner["user_id"], "role": "owner"}]})
    as_owner = client.as_user(owner["access_token"])
    as_mod = client.as_user(moderator["access_token"])
    as_member = client.as_user(member["access_token"])

    assert (await as_owner.put(f"/api/v1/rooms/{room}/members/{moderator['user_id']}",
                               {"role": "moderator"})).status == 204
    assert (await as_mod.put(f"/api/v1/rooms/{room}/members/{member['user_id']}", {"role": "member"})).status == 204
    # A moderator cannot promote, and a member cannot manage roles at all.
    promote = await as_mod.put(f"/api/v1/rooms/{room}/members/{member['user_id']}", {"role": "owner"})
    assert promote.status == 403
    assert (await as_member.put(f"/api/v1/rooms/{room}/members/{outsider['user_id']}",
                                {"role": "member"})).status == 403
    bad_role = await as_owner.put(f"/api/v1/rooms/{room}/members/{member['user_id']}", {"role": "emperor"})
    assert bad_role.status == 422

    ban = await as_mod.post(f"/api/v1/rooms/{room}/moderation",
                            {"action": "ban", "user_id": member["user_id"], "reason": "spam",
                             "duration_seconds": 3600})
    assert ban.status == 201 and ban.body["action"] == "ban" and ban.body["until"]
    up = await as_mod.post(f"/api/v1/rooms/{room}/moderation", {"action": "mute", "user_id": owner["user_id"]})
    assert up.status == 403, "moderators cannot act on owners"
    assert (await as_member.post(f"/api/v1/rooms/{room}/moderation",
                                 {"action": "mute", "user_id": moderator["user_id"]})).status == 403
    actions = await as_owner.get(f"/api/v1/rooms/{room}/moderation")
    assert [a["action"] for a in actions.body["actions"]] == ["ban"]

    audit = (await admin.get("/api/v1/admin/audit", event="room.moderation", subject=member["user_id"])).body
    assert audit["entries"][0]["details"]["room"] == room
    granted = (await admin.get("/api/v1/admin/audit", event="role.granted", subject=moderator["user_id"])).body
    assert granted["entries"][0]["details"] == {"scope": f"room/{room}", "role": "moderator"}
    assert granted["entries"][0]["actor_id"] == owner["user_id"]

    assert (await as_owner.delete(f"/api/v1/rooms/{room}/members/{moderator['user_id']}")).status == 204
    assert (await as_mod.get(f"/api/v1/rooms/{room}/moderation")).status == 403, "a revoked role stops at once"


async def test_channels_and_now_playing(client: Client, admin: Client, api_server: ApiServer,
                                        redis: RedisService) -> None:
    channel = _name()
    assert (await admin.put(f"/api/v1/admin/channels/{channel}", {"title": "Radio"})).status == 201
    r = aioredis.from_url(redis.url)
    try:
        await r.hset(f"veza:{api_server.settings.platform}:channel:{channel}:now_playing",
                     mapping={"track_id": "t1", "title": "Song"})
    finally:
        await r.aclose()
    detail = await client.get(f"/api/v1/channels/{channel}")
    assert detail.status == 200 and detail.body["now_playing"] == {"track_id": "t1", "title": "Song"}
    assert channel in {c["name"] for c in (await client.get("/api/v1/channels")).body["channels"]}
    user = await client.register_and_login()
    as_user = client.as_user(user["access_token"])
    assert (await as_user.put(f"/api/v1/channels/{channel}/members/{user['user_id']}",
                              {"role": "broadcaster"})).status == 403
    assert (await admin.put(f"/api/v1/channels/{channel}/members/{user['user_id']}",
                            {"role": "broadcaster"})).status == 204
    assert (await as_user.get("/api/v1/me")).body["resources"] == {f"channel/{channel}": "broadcaster"}


async def test_admin_manages_platform_roles_and_disables_users(client: Client, admin: Client) -> None:
    user = await client.register_and_login()
    as_user = client.as_user(user["access_token"])
    assert (await as_user.get("/api/v1/admin/users")).status == 403
    promoted = await admin.patch(f"/api/v1/admin/users/{user['user_id']}", {"roles": ["admin"]})
    assert promoted.status == 200 and promoted.body["roles"] == ["admin"]
    assert (await as_user.get("/api/v1/admin/users", email=user["email"])).body["users"][0]["id"] == user["user_id"]
    assert (await admin.patch(f"/api/v1/admin/users/{user['user_id']}", {"roles": []})).status == 200
    assert (await as_user.get("/api/v1/admin/users")).status == 403, "demotion applies to existing tokens"
    assert (await admin.patch(f"/api/v1/admin/users/{user['user_id']}", {"roles": ["god"]})).status == 422

    disabled = await admin.patch(f"/api/v1/admin/users/{user['user_id']}", {"disabled": True})
    assert disabled.status == 200 and disabled.body["disabled"]
    assert (await as_user.get("/api/v1/me")).status == 401
    login = await client.post("/api/v1/auth/login", {"email": user["email"], "password": PASSWORD})
    assert login.status == 401
    assert (await admin.patch(f"/api/v1/admin/users/{uuid.uuid4()}", {"disabled": True})).status == 404
    assert (await admin.patch("/api/v1/admin/users/not-a-uuid", {"disabled": True})).status == 404


async def test_a_ban_through_the_api_is_enforced_by_the_chat_workers(
        client: Client, admin: Client, api_server: ApiServer, nats: NatsService, redis: RedisService,
        tmp_path: Path) -> None:
    """A moderator bans over REST; the member's open socket on a real chat worker (same database, the
    API's keys) is closed with 4003 and the member cannot come back. Bans made through the API were
    written where no worker looked: a banned user kept posting."""
    chat = Chat(tmp_path, api_server.keys_dir, TokenIssuer(KeySet.from_private_keys([generate_signing_key()]),
                                                          issuer=ISSUER),
                {"VEZA_DATABASE_URL": api_server.database_url, "VEZA_NATS_URL": nats.url,
                 "VEZA_REDIS_URL": redis.url})
    try:
        moderator, member = [await client.register_and_login() for _ in range(2)]
        await admin.put(f"/api/v1/admin/rooms/{chat.room}", {"title": "Room", "members": [
            {"user": moderator["user_id"], "role": "moderator"}]})
        reply = await client.as_user(member["access_token"]).post("/api/v1/auth/service-token",
                                                                  {"audience": "veza-chat"})
        assert reply.status == 200, reply.body
        worker = await chat.worker()
        socket = await chat.connect(worker, token=reply.body["token"])
        await socket.send({"type": "send", "cid": "before", "text": "hello"})
        await socket.expect("ack", cid="before")

        ban = await client.as_user(moderator["access_token"]).post(
            f"/api/v1/rooms/{chat.room}/moderation", {"action": "ban", "user_id": member["user_id"], "reason": "spam"})
        assert ban.status == 201, ban.body
        # Workers reload sanctions every ~10 s (and at once when a moderator acts over the WebSocket).
        closed = await asyncio.wait_for(_closed(socket), timeout=30)
        assert closed == 4003, closed
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await chat.connect(worker, token=reply.body["token"])
        assert refused.value.status == 403
    finally:
        await chat.close()


async def _closed(socket: ChatClient) -> int | None:
    """Read the socket until the server closes it; its close code."""
    while await socket.recv(timeout=30) is not None:
        pass
    return socket.close_code


async def test_room_management_does_not_tell_strangers_which_rooms_exist(client: Client, admin: Client) -> None:
    """401 for anyone anonymous and 403 for a stranger, whether or not the room exists: a 404 before
    the check listed private room names to whoever asked."""
    private = _name()
    owner, stranger = [await client.register_and_login() for _ in range(2)]
    await admin.put(f"/api/v1/admin/rooms/{private}", {"title": "Hidden", "visibility": "private", "members": [
        {"user": owner["user_id"], "role": "owner"}]})
    as_stranger = client.as_user(stranger["access_token"])
    for room in (private, _name()):
        member = f"/api/v1/rooms/{room}/members/{stranger['user_id']}"
        assert (await client.put(member, {"role": "member"})).status == 401, room
        assert (await as_stranger.put(member, {"role": "member"})).status == 403, room
        assert (await as_stranger.delete(member)).status == 403, room
        moderation = f"/api/v1/rooms/{room}/moderation"
        assert (await as_stranger.post(moderation, {"action": "ban", "user_id": owner["user_id"]})).status == 403
    assert (await admin.put(f"/api/v1/rooms/{_name()}/members/{stranger['user_id']}",
                            {"role": "member"})).status == 404, "an admin still learns that a room is missing"
