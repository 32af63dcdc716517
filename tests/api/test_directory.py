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
