"""One PostgreSQL role per component: `veza migrate` grants each what its code runs, nothing more.

Every worker used to connect with the schema owner's URL: a compromised stream worker (it decodes
untrusted audio) could make anyone an admin with one UPDATE. These tests grant real roles with the
real `veza migrate`, replay that UPDATE as each worker, and run the API and a chat worker under their
roles to show the grants are enough.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest

from tests.support.api import ISSUER, ServerFactory
from tests.support.chat import Chat
from veza_core import directory
from veza_core.auth import TokenIssuer
from veza_core.grants import CROSS_RANGE, Schema
from veza_core.keys import KeySet, generate_signing_key
from veza_local.services import NatsService, RedisService


def as_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{quote(user)}:{quote(password)}@{host}"))


@pytest.fixture(scope="module")
async def component_urls(api_database: str) -> dict[str, str]:
    """Login roles for api, chat and stream on the API tests' database, granted by `veza migrate`."""
    password = secrets.token_hex(12)
    roles = {c: f"veza_{c}_{uuid.uuid4().hex[:6]}" for c in ("api", "chat", "stream")}
    owner = await asyncpg.connect(api_database)
    try:
        for role in roles.values():
            await owner.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    finally:
        await owner.close()
    urls = {c: as_user(api_database, role, password) for c, role in roles.items()}
    # What the migration Job runs: the owner's URL, the components' URLs (only their users matter).
    env = {**os.environ, "VEZA_DATABASE_URL": api_database, "VEZA_DATABASE_URL_API": urls["api"],
           "VEZA_DATABASE_URL_CHAT": urls["chat"]}
    done = subprocess.run([sys.executable, "-m", "veza_cli.main", "migrate", "--grant", f"stream={roles['stream']}"],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "applied" in json.loads(done.stdout.strip().splitlines()[-1])
    return urls


async def _refused(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(sql)
    finally:
        await conn.close()


async def test_a_compromised_worker_cannot_make_itself_admin(component_urls: dict[str, str]) -> None:
    for component in ("chat", "stream"):
        await _refused(component_urls[component], "UPDATE users SET roles = '{admin}'")
        await _refused(component_urls[component], "INSERT INTO users (email, display_name) VALUES ('x@y', 'x')")
    await _refused(component_urls["chat"], "SELECT * FROM sessions")
    await _refused(component_urls["stream"], "SELECT * FROM tracks")  # it declares its channel, nothing more
    await _refused(component_urls["stream"], "DELETE FROM channels")
    # Only the schema owner changes the schema: no worker drops history or adds a table.
    for component in ("api", "chat"):
        await _refused(component_urls[component], "DROP TABLE chat_events")
        await _refused(component_urls[component], "CREATE TABLE planted (x int)")
    await _refused(component_urls["api"], "DELETE FROM chat_events")


async def test_the_grants_follow_the_migration_ranges() -> None:
    schema = Schema.from_migrations()
    assert {"users", "sessions", "tracks", "rooms"} <= set(schema.tables["api"])
    assert {"chat_events", "chat_sanctions"} <= set(schema.tables["chat"])
    assert schema.tables["stream"] == ()
    assert "chat_append" in schema.functions["chat"]
    assert "chat_duplicates" not in schema.functions["chat"]  # dropped by a later migration: nothing to grant
    # What one component takes from another's range is named, and exists.
    for component, tables in CROSS_RANGE.items():
        for table in tables:
            assert any(table in t for c, t in schema.tables.items() if c != component), table


async def test_the_api_and_a_chat_worker_run_under_their_roles(
        component_urls: dict[str, str], api_database: str, make_api: ServerFactory, nats: NatsService,
        redis: RedisService, tmp_path: Path) -> None:
    api = await make_api(database_url=component_urls["api"])
    client = api.client
    moderator, member = [await client.register_and_login() for _ in range(2)]
    renewed = await client.post("/api/v1/auth/refresh", {"refresh_token": member["refresh_token"]})
    assert renewed.status == 200, renewed.body
    owner = await asyncpg.connect(api_database)  # the platform engineer makes an admin
    try:
        await owner.execute("UPDATE users SET roles = '{admin}' WHERE id = $1", uuid.UUID(moderator["user_id"]))
    finally:
        await owner.close()
    admin = client.as_user((await client.register_and_login(moderator["email"]))["access_token"])

    chat = Chat(tmp_path, api.keys_dir, TokenIssuer(KeySet.from_private_keys([generate_signing_key()]), issuer=ISSUER),
                {"VEZA_DATABASE_URL": component_urls["chat"], "VEZA_NATS_URL": nats.url, "VEZA_REDIS_URL": redis.url,
                 "VEZA_CHAT_MIGRATE": "0"})
    try:
        made = await admin.put(f"/api/v1/admin/rooms/{chat.room}", {"title": "Room", "members": [
            {"user": moderator["user_id"], "role": "moderator"}]})
        assert made.status in (200, 201), made.body
        tokens = {}
        for who in (moderator, member):
            reply = await client.as_user(who["access_token"]).post("/api/v1/auth/service-token",
                                                                  {"audience": "veza-chat"})
            assert reply.status == 200, reply.body
            tokens[who["user_id"]] = reply.body["token"]
        worker = await chat.worker()
        talker = await chat.connect(worker, token=tokens[member["user_id"]])
        await talker.send({"type": "send", "cid": "one", "text": "hello"})
        await talker.expect("ack", cid="one")
        mod = await chat.connect(worker, token=tokens[moderator["user_id"]])
        await mod.send({"type": "moderate", "action": "mute", "user": member["user_id"], "seconds": 60})
        await mod.expect("moderation")
        history = await chat.connect(worker, token=tokens[moderator["user_id"]], after=0)
        await history.expect("event", seq=1)

        ban = await admin.post(f"/api/v1/rooms/{chat.room}/moderation",
                               {"action": "ban", "user_id": member["user_id"], "reason": "x"})
        assert ban.status == 201, ban.body
        assert (await client.as_user(renewed.body["access_token"]).post("/api/v1/auth/logout")).status == 204
    finally:
        await chat.close()


async def test_a_stream_worker_declares_its_channel_under_its_role(component_urls: dict[str, str]) -> None:
    conn = await asyncpg.connect(component_urls["stream"])
    try:
        name = f"c{uuid.uuid4().hex[:8]}"
        await directory.declare(conn, "channel", name, "Radio", "public")
        await directory.declare(conn, "channel", name, "Radio 2", "public")  # again, on a restart
        assert await conn.fetchval("SELECT title FROM channels WHERE name = $1", name) == "Radio 2"
    finally:
        await conn.close()
