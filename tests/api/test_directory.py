"""The directory credential: the operator declares rooms and channels with it, and it opens nothing else."""

from __future__ import annotations

import secrets
import uuid

import aiohttp
import pytest

from tests.support.api import ADMIN_EMAIL, ApiServer, Client, ServerFactory

TOKEN = secrets.token_urlsafe(32)


def _name(prefix: str = "d") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
async def directory_api(make_api: ServerFactory) -> ApiServer:
    return await make_api(directory_token=TOKEN)


@pytest.fixture
def operator(directory_api: ApiServer) -> Client:
    return directory_api.client.as_user(TOKEN)


@pytest.fixture
def anyone(directory_api: ApiServer) -> Client:
    return directory_api.client.as_user(None)


async def test_the_operator_declares_updates_and_removes(operator: Client, anyone: Client) -> None:
    room, channel, hidden = _name("room"), _name("chan"), _name("room")
    member = await anyone.register_and_login()
    outsider = await anyone.register_and_login()

    assert (await operator.put(f"/api/v1/admin/channels/{channel}", {"title": "Radio"})).status == 201
    made = await operator.put(f"/api/v1/admin/rooms/{room}", {"title": "Lobby", "channel": channel})
    assert made.status == 201 and made.body["channel"] == channel
    assert (await operator.put(f"/api/v1/admin/rooms/{hidden}", {
        "title": "Staff", "visibility": "private", "members": [{"user": member["user_id"], "role": "owner"}]}
    )).status == 201

    listed = {r["name"]: r for r in (await operator.get("/api/v1/admin/rooms")).body["rooms"]}
    assert listed[room]["channel"] == channel and listed[hidden]["visibility"] == "private"
    assert channel in {c["name"] for c in (await operator.get("/api/v1/admin/channels")).body["channels"]}

    # A member listed in the declaration sees the private room and may open it; others do not.
    as_member = anyone.as_user(member["access_token"])
    assert hidden in {r["name"] for r in (await as_member.get("/api/v1/rooms")).body["rooms"]}
    assert (await as_member.get(f"/api/v1/rooms/{hidden}")).body["your_role"] == "owner"
    as_outsider = anyone.as_user(outsider["access_token"])
    assert hidden not in {r["name"] for r in (await as_outsider.get("/api/v1/rooms")).body["rooms"]}
    assert (await as_outsider.get(f"/api/v1/rooms/{hidden}")).status == 404

    # Updates: title, visibility, members (replaced), binding.
    changed = await operator.put(f"/api/v1/admin/rooms/{hidden}", {
        "title": "Crew", "visibility": "private", "members": [{"user": outsider["user_id"], "role": "member"}]})
    assert changed.status == 200 and changed.body["title"] == "Crew"
    assert (await as_member.get(f"/api/v1/rooms/{hidden}")).status == 404
    assert (await as_outsider.get(f"/api/v1/rooms/{hidden}")).body["your_role"] == "member"
    unbound = await operator.put(f"/api/v1/admin/rooms/{room}", {"title": "Lobby"})
    assert unbound.status == 200 and unbound.body["channel"] is None

    assert (await operator.delete(f"/api/v1/admin/rooms/{hidden}")).status == 204
    assert hidden not in {r["name"] for r in (await operator.get("/api/v1/admin/rooms")).body["rooms"]}
    assert (await as_outsider.get(f"/api/v1/rooms/{hidden}")).status == 404


async def test_the_audit_log_names_the_operator(operator: Client, anyone: Client) -> None:
    room = _name()
    member = await anyone.register_and_login()
    await operator.put(f"/api/v1/admin/rooms/{room}", {"title": "Audited", "members": [
        {"user": member["user_id"], "role": "moderator"}]})
    await operator.delete(f"/api/v1/admin/rooms/{room}")
    admin = anyone.as_user((await anyone.register_and_login(ADMIN_EMAIL, name="Root"))["access_token"])
    granted = (await admin.get("/api/v1/admin/audit", event="role.granted", subject=member["user_id"])).body
    assert granted["entries"][0]["actor_id"] is None and granted["entries"][0]["details"]["by"] == "operator"
    deleted = (await admin.get("/api/v1/admin/audit", event="room.deleted", subject=f"room/{room}")).body
    assert deleted["entries"][0]["details"]["by"] == "operator"


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/v1/me"), ("GET", "/api/v1/rooms"), ("GET", "/api/v1/channels/x"), ("GET", "/api/v1/tracks"),
    ("PUT", "/api/v1/rooms/x/members/00000000-0000-0000-0000-000000000001"), ("GET", "/api/v1/admin/users"),
    ("GET", "/api/v1/admin/audit"), ("POST", "/api/v1/auth/service-token"), ("POST", "/api/v1/auth/logout"),
])
async def test_the_credential_opens_nothing_else(operator: Client, method: str, path: str) -> None:
    refused = await operator.call(method, path, json_body={"audience": "veza-chat", "role": "owner"}, check=False)
    assert refused.status == 401 and refused.body["error"]["code"] == "invalid_token", (path, refused.body)


async def test_wrong_or_unconfigured_credentials_are_refused(anyone: Client, api_server: ApiServer) -> None:
    room = _name()
    for token in (secrets.token_urlsafe(32), TOKEN[:-1] + ("A" if TOKEN[-1] != "A" else "B")):
        refused = await anyone.as_user(token).put(f"/api/v1/admin/rooms/{room}", {"title": "No"})
        assert refused.status == 401
    assert (await anyone.put(f"/api/v1/admin/rooms/{room}", {"title": "No"})).status == 401
    # A server without a directory credential takes the token for what it is: not a valid access token.
    other = api_server.client.as_user(TOKEN)
    assert (await other.put(f"/api/v1/admin/rooms/{room}", {"title": "No"})).status == 401
    assert (await other.get("/api/v1/admin/rooms")).status == 401


async def test_users_cannot_list_the_directory(anyone: Client) -> None:
    user = anyone.as_user((await anyone.register_and_login())["access_token"])
    assert (await user.get("/api/v1/admin/rooms")).status == 403
    assert (await anyone.get("/api/v1/admin/channels")).status == 401


async def test_only_rooms_are_bound_and_only_channels_have_renditions(operator: Client) -> None:
    refused = await operator.put(f"/api/v1/admin/channels/{_name()}", {"title": "X", "channel": "radio"})
    assert refused.status == 422
    refused = await operator.put(f"/api/v1/admin/rooms/{_name()}", {
        "title": "X", "renditions": [{"name": "mp3-128", "codec": "mp3"}]})
    assert refused.status == 422


async def test_rooms_carry_their_worker_spec_and_placement_to_the_directory_only(operator: Client,
                                                                                 anyone: Client) -> None:
    room, plain = _name("room"), _name("room")
    # As the operator passes it to a dedicated worker: camelCase, stored and given back as sent.
    spec = {"title": "Pooled", "visibility": "public", "limits": {"maxMembers": 500, "messagesPerMinute": 30},
            "moderation": {"slowModeSeconds": 2}, "retention": {"days": 7}}
    made = await operator.put(f"/api/v1/admin/rooms/{room}", {"title": "Pooled", "spec": spec, "placement": "pooled"})
    assert made.status == 201 and made.body["spec"] == spec and made.body["placement"] == "pooled"
    assert (await operator.put(f"/api/v1/admin/rooms/{plain}", {"title": "Plain"})).body | {"updated_at": None} == {
        "name": plain, "title": "Plain", "visibility": "public", "channel": None, "placement": "dedicated",
        "spec": None, "updated_at": None}

    # Absent or null: what is stored stays; each is changed on its own.
    kept = await operator.put(f"/api/v1/admin/rooms/{room}", {"title": "Renamed", "spec": None})
    assert kept.status == 200 and (kept.body["spec"], kept.body["placement"]) == (spec, "pooled")
    moved = await operator.put(f"/api/v1/admin/rooms/{room}", {"title": "Renamed", "placement": "dedicated"})
    assert (moved.body["spec"], moved.body["placement"]) == (spec, "dedicated")
    respec = {**spec, "limits": {"maxMembers": 50}}
    changed = await operator.put(f"/api/v1/admin/rooms/{room}", {"title": "Renamed", "spec": respec})
    assert (changed.body["spec"], changed.body["placement"]) == (respec, "dedicated")
    listed = {r["name"]: r for r in (await operator.get("/api/v1/admin/rooms")).body["rooms"]}
    assert (listed[room]["spec"], listed[room]["placement"]) == (respec, "dedicated")
    assert (listed[plain]["spec"], listed[plain]["placement"]) == (None, "dedicated")

    # Users never see either.
    public = {r["name"]: r for r in (await anyone.get("/api/v1/rooms")).body["rooms"]}
    one = (await anyone.get(f"/api/v1/rooms/{room}")).body
    for seen in (public[room], public[plain], one):
        assert "spec" not in seen and "placement" not in seen, seen


@pytest.mark.parametrize(("spec", "where"), [
    ({"visibility": "secret"}, "visibility"), ({"limits": {"maxMembers": 0}}, "limits.maxMembers"),
    ({"members": [{"user": "", "role": "owner"}]}, "members.0.user"), ([{"title": "x"}], "an object"),
])
async def test_a_spec_no_worker_would_run_is_refused(operator: Client, spec: object, where: str) -> None:
    room = _name("room")
    refused = await operator.put(f"/api/v1/admin/rooms/{room}", {"title": "X", "spec": spec})
    assert refused.status == 422 and refused.body["error"]["code"] == "invalid_body"
    assert refused.body["error"]["problems"][0]["field"] == "spec" and where in refused.body["error"]["problems"][0][
        "problem"], refused.body
    assert (await operator.put(f"/api/v1/admin/rooms/{room}", {"title": "X", "placement": "shared"})).status == 422
    assert room not in {r["name"] for r in (await operator.get("/api/v1/admin/rooms")).body["rooms"]}


async def test_channels_have_no_spec_and_no_placement(operator: Client) -> None:
    for extra in ({"spec": {"title": "Radio"}}, {"placement": "pooled"}):
        refused = await operator.put(f"/api/v1/admin/channels/{_name('chan')}", {"title": "Radio", **extra})
        assert refused.status == 422 and refused.body["error"]["code"] == "invalid_body"


async def test_a_room_may_be_called_load(operator: Client) -> None:
    # The load feed's path is a literal route; a room of that name is still declared and removed by its own.
    # Unchecked calls: the OpenAPI checker takes the literal path for the feed, which has no PUT or DELETE.
    made = await operator.put("/api/v1/admin/rooms/load", {"title": "Load", "placement": "pooled"}, check=False)
    assert made.status in (200, 201) and made.body["name"] == "load" and made.body["placement"] == "pooled"
    assert "load" in {r["name"] for r in (await operator.get("/api/v1/admin/rooms")).body["rooms"]}
    assert "window_seconds" in (await operator.get("/api/v1/admin/rooms/load")).body
    assert (await operator.delete("/api/v1/admin/rooms/load", check=False)).status == 204


async def test_the_web_client_gets_the_bindings_of_public_rooms(operator: Client, anyone: Client,
                                                                directory_api: ApiServer) -> None:
    public, private, radio, secret = _name("room"), _name("room"), _name("chan"), _name("chan")
    renditions = [{"name": "opus-96", "codec": "opus"}, {"name": "mp3-128", "codec": "mp3"}]
    made = await operator.put(f"/api/v1/admin/channels/{radio}", {"title": "Radio", "renditions": renditions})
    assert made.body["renditions"] == renditions
    await operator.put(f"/api/v1/admin/channels/{secret}", {"title": "Secret", "visibility": "private"})
    await operator.put(f"/api/v1/admin/rooms/{public}", {"title": "Open", "channel": radio})
    owner = await anyone.register_and_login()
    await operator.put(f"/api/v1/admin/rooms/{private}", {
        "title": "Closed", "visibility": "private", "channel": radio,
        "members": [{"user": owner["user_id"], "role": "owner"}]})
    bound_to_secret = _name("room")
    await operator.put(f"/api/v1/admin/rooms/{bound_to_secret}", {"title": "Hush", "channel": secret})

    async with aiohttp.ClientSession() as http, http.get(f"{directory_api.client.base}/web/config.json") as resp:
        assert resp.status == 200
        config = await resp.json()
    assert config["rooms"][public] == {"title": "Open", "channel": radio}
    assert config["channels"][radio] == {"title": "Radio", "renditions": renditions}
    assert private not in config["rooms"] and secret not in config["channels"]
    assert config["rooms"][bound_to_secret]["channel"] is None  # a private channel is not named

    # Members of a private room learn its (public) channel from the room itself.
    as_owner = anyone.as_user(owner["access_token"])
    assert (await as_owner.get(f"/api/v1/rooms/{private}")).body["channel"] == radio
    assert (await anyone.get(f"/api/v1/channels/{radio}")).body["renditions"] == renditions
    rooms = {r["name"]: r for r in (await anyone.get("/api/v1/rooms")).body["rooms"]}
    assert rooms[public]["channel"] == radio and rooms[bound_to_secret]["channel"] is None
