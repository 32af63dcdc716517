"""Signing-key rotation seen by real workers: the operator's stages, projected into the workers' key
directories the way the kubelet updates a Secret volume, with the lag of a kubelet on another node.

The API (in this process) and a chat worker (a `veza chat` process, on real PostgreSQL, NATS and
Redis) each read their own copy of the Secret, as pods on two nodes do. The schedule's clock is moved
by the test (`keys.advance(now=...)`), so the overlap ends when the test says; the workers see only
the files, as in a cluster.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from tests.support.api import ISSUER, ApiServer, Client, ServerFactory, write_keys
from tests.support.chat import Chat
from tests.support.waiting import wait_for
from veza_core.auth import AUDIENCE_CHAT, TokenIssuer
from veza_core.keys import KeySet, generate_signing_key, secret_data
from veza_local.services import NatsService, PostgresService, RedisService
from veza_operator import keys

# What a kubelet on another node may lag behind, here: short, and shorter than the propagation bound.
NODE_LAG = 1.5
RECHECK = 5.0  # KeySet re-reads the files at most this often
PROPAGATION = NODE_LAG + RECHECK + 1.0
TIMING = keys.Timing(period=None, overlap=timedelta(seconds=900), propagation=timedelta(seconds=PROPAGATION))


class SecretVolume:
    """A Secret volume as the kubelet writes it (its AtomicWriter): the files live in a timestamped
    directory, `..data` points at it, and each key is a symlink through `..data`; an update writes a new
    directory and swaps `..data` in one rename, so a reader sees the old set or the new one, whole."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    def project(self, data: dict[str, str]) -> None:
        stamp = datetime.now(UTC).strftime("..%Y_%m_%d_%H_%M_%S.") + secrets.token_hex(4)
        target = self.path / stamp
        target.mkdir()
        for name, text in data.items():
            (target / name).write_text(text)
        data_link, old = self.path / "..data", None
        if data_link.is_symlink():
            old = self.path / os.readlink(data_link)
        (self.path / "..data_tmp").symlink_to(stamp)
        os.replace(self.path / "..data_tmp", data_link)
        for name in data:
            link = self.path / name
            if not link.is_symlink():
                link.symlink_to(Path("..data") / name)
        if old is not None:
            shutil.rmtree(old)


class Operator:
    """The keys Secret as the operator keeps it, projected into the API's volume at once and into the
    chat worker's volume NODE_LAG later (another node's kubelet)."""

    def __init__(self, api_volume: SecretVolume, chat_volume: SecretVolume) -> None:
        first = generate_signing_key()
        self.start = datetime.now(UTC).replace(microsecond=0)
        self.schedule = keys.Schedule((keys.KeyTimes(first["kid"], self.start, self.start),))
        self.private = [first]
        self.volumes = (api_volume, chat_volume)
        self.lagging: set[asyncio.Task[None]] = set()
        for volume in self.volumes:
            volume.project(self.data())

    def data(self) -> dict[str, str]:
        encoded, _ = keys.secret_payload(self.private, self.schedule)
        return {name: base64.b64decode(value).decode() for name, value in encoded.items()}

    async def at(self, seconds: float, request: str | None = None) -> list[str]:
        """Run the operator's step `seconds` after the first key, and let the kubelets project the Secret."""
        step = keys.advance(self.schedule, self.private, TIMING, self.start + timedelta(seconds=seconds),
                            request=request)
        self.schedule, self.private = step.schedule, step.private_keys
        data = self.data()
        self.volumes[0].project(data)

        async def later() -> None:
            await asyncio.sleep(NODE_LAG)  # the other node's kubelet syncs later
            self.volumes[1].project(data)

        task = asyncio.create_task(later())
        self.lagging.add(task)
        task.add_done_callback(self.lagging.discard)
        return [s.reason for s in step.stages]

    def times(self, kid: str) -> keys.KeyTimes:
        return next(k for k in self.schedule.keys if k.kid == kid)

    @property
    def signer(self) -> str:
        return str(self.private[0]["kid"])


@pytest.fixture
async def rollout(make_api: ServerFactory, tmp_path: Path, postgres: PostgresService, nats: NatsService,
                  redis: RedisService) -> AsyncIterator[tuple[Operator, ApiServer, Chat]]:
    api_volume, chat_volume = SecretVolume(tmp_path / "api-keys"), SecretVolume(tmp_path / "chat-keys")
    operator = Operator(api_volume, chat_volume)
    server = await make_api(jwt_keys_dir=api_volume.path, rate_login_per_minute=100_000, rate_login_burst=10_000)
    chat = Chat(tmp_path, chat_volume.path, TokenIssuer(KeySet(chat_volume.path), issuer=ISSUER),
                {"VEZA_DATABASE_URL": postgres.url, "VEZA_NATS_URL": nats.url, "VEZA_REDIS_URL": redis.url})
    yield operator, server, chat
    await chat.close()
    for task in list(operator.lagging):
        task.cancel()


def kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


async def chat_token(client: Client, access_token: str) -> str:
    reply = await client.as_user(access_token).post("/api/v1/auth/service-token", {"audience": AUDIENCE_CHAT})
    assert reply.status == 200, reply.body
    return str(reply.body["token"])


async def chat_handshake(chat: Chat, url: str, token: str) -> int:
    """The status of a WebSocket handshake with `token` at the chat worker (101: in)."""
    async with aiohttp.ClientSession() as session:
        try:
            ws = await session.ws_connect(f"{url}/chat/{chat.room}/ws", protocols=("veza.chat.v1", f"bearer.{token}"))
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        await ws.close()
        return 101


async def test_a_token_signed_before_a_rotation_verifies_until_the_overlap_ends(
        rollout: tuple[Operator, ApiServer, Chat]) -> None:
    operator, server, chat = rollout
    worker = await chat.worker()
    client = server.client
    before = await client.register_and_login()
    old_access, old_chat = before["access_token"], await chat_token(client, before["access_token"])
    old_kid = kid(old_access)
    assert old_kid == kid(old_chat) == operator.signer

    async def both_accept(access: str, chat_tok: str) -> bool:
        return ((await client.as_user(access).get("/api/v1/me")).status == 200
                and await chat_handshake(chat, worker.url, chat_tok) == 101)

    # 1. published: the new key verifies, the old one still signs.
    assert await operator.at(10, request="r1") == ["KeyPublished"]
    new_kid = operator.private[1]["kid"]
    await wait_for(lambda: _jwks_kids(client, {old_kid, new_kid}), timeout=RECHECK + 3, interval=0.25,
                   message="the API serving both keys")
    fresh = await client.post("/api/v1/auth/login", {"email": before["email"],
                                                     "password": "correct horse battery staple"})
    assert kid(fresh.body["access_token"]) == old_kid  # not signing with it yet
    assert await both_accept(old_access, old_chat)

    # 2. activated: the API signs with the new key; the old key's tokens still verify everywhere.
    activates = (operator.times(new_kid).activates - operator.start).total_seconds()
    assert await operator.at(activates) == ["KeyActivated"]

    async def signed_with_the_new_key() -> dict[str, Any] | None:
        pair = (await client.post("/api/v1/auth/refresh", {"refresh_token": fresh.body["refresh_token"]})).body
        fresh.body.update(pair)
        return pair if kid(pair["access_token"]) == new_kid else None

    # A client holding a refresh token from before the rotation gets a token of the new key: not logged out.
    renewed = await wait_for(signed_with_the_new_key, timeout=RECHECK + 3, interval=0.5,
                             message="the API signing with the new key")
    new_chat = await chat_token(client, renewed["access_token"])
    assert kid(new_chat) == new_kid
    assert await both_accept(renewed["access_token"], new_chat)
    assert await both_accept(old_access, old_chat)

    # 3. One second before the old key retires it still verifies; at its retirement it is refused.
    retires = (operator.times(old_kid).retires - operator.start).total_seconds()  # type: ignore[operator]
    assert retires == activates + PROPAGATION + 900
    assert await operator.at(retires - 1) == []
    await asyncio.sleep(NODE_LAG + RECHECK)  # the time a change would take to reach both workers
    assert await both_accept(old_access, old_chat)
    assert await operator.at(retires) == ["KeyRetired"]

    async def old_refused() -> bool:
        me = await client.as_user(old_access).get("/api/v1/me")
        return me.status == 401 and me.body["error"]["code"] == "token_key" \
            and await chat_handshake(chat, worker.url, old_chat) == 401

    await wait_for(old_refused, timeout=NODE_LAG + RECHECK + 3, interval=0.25,
                   message="the old key's tokens refused by the API and the chat worker")
    assert await both_accept(renewed["access_token"], new_chat)


async def test_a_key_that_signed_at_once_would_be_refused_on_a_lagging_node(
        rollout: tuple[Operator, ApiServer, Chat]) -> None:
    """Why the stages: the same rotation done in one step (the new key first, straight away)."""
    operator, server, chat = rollout
    worker = await chat.worker()
    user = await server.client.register_and_login()
    new = generate_signing_key()
    operator.volumes[0].project(secret_data([new, *operator.private]))  # the API's node only
    token = await wait_for(lambda: _token_of(server.client, user, new["kid"]), timeout=RECHECK + 3, interval=0.5,
                           message="the API signing with the new key")
    status = await chat_handshake(chat, worker.url, await chat_token(server.client, token))
    assert status == 401  # the chat worker's node has not seen the key yet


async def _token_of(client: Client, user: dict[str, Any], wanted: str) -> str | None:
    pair = (await client.post("/api/v1/auth/refresh", {"refresh_token": user["refresh_token"]})).body
    user.update(pair)
    return str(pair["access_token"]) if kid(pair["access_token"]) == wanted else None


async def _jwks_kids(client: Client, wanted: set[str]) -> bool:
    return {k["kid"] for k in (await client.get("/.well-known/jwks.json")).body["keys"]} == wanted


async def test_no_client_sees_an_auth_failure_during_a_rotation_under_load(
        rollout: tuple[Operator, ApiServer, Chat]) -> None:
    operator, server, chat = rollout
    worker = await chat.worker()
    client = server.client
    users = [await client.register_and_login() for _ in range(4)]
    old_kid = operator.signer
    outcomes: Counter[str] = Counter()
    signed_by: Counter[str] = Counter()
    stop = asyncio.Event()

    async def user_loop(user: dict[str, Any]) -> None:
        """Log in, call the API, refresh, get a chat token and join the room, over and over."""
        while not stop.is_set():
            login = await client.post("/api/v1/auth/login", {"email": user["email"],
                                                             "password": "correct horse battery staple"})
            outcomes[f"login {login.status}"] += 1
            if login.status != 200:
                continue
            signed_by[kid(login.body["access_token"])] += 1
            me = await client.as_user(login.body["access_token"]).get("/api/v1/me")
            outcomes[f"me {me.status}"] += 1
            pair = await client.post("/api/v1/auth/refresh", {"refresh_token": login.body["refresh_token"]})
            outcomes[f"refresh {pair.status}"] += 1
            # An access token held from before: the one a client logged in earlier still uses.
            held = await client.as_user(user["access_token"]).get("/api/v1/me")
            outcomes[f"held {held.status}"] += 1
            service = await client.as_user(login.body["access_token"]).post(
                "/api/v1/auth/service-token", {"audience": AUDIENCE_CHAT})
            outcomes[f"service-token {service.status}"] += 1
            if service.status == 200:
                outcomes[f"chat {await chat_handshake(chat, worker.url, service.body['token'])}"] += 1

    loops = [asyncio.create_task(user_loop(u)) for u in users]
    try:
        await asyncio.sleep(1)  # load before the rotation starts
        assert await operator.at(10, request="load") == ["KeyPublished"]
        new_kid = operator.private[1]["kid"]
        # The operator waits out the propagation bound between its stages: so does the test.
        await asyncio.sleep(PROPAGATION)
        activates = (operator.times(new_kid).activates - operator.start).total_seconds()
        assert await operator.at(activates) == ["KeyActivated"]
        await wait_for(lambda: signed_by[new_kid] >= 8, timeout=RECHECK + 5, interval=0.25,
                       message="logins signed with the new key")
        await asyncio.sleep(2)  # more load with both keys about
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.gather(*loops)
    for task in loops:
        task.result()  # a loop that crashed fails the test
    failures = {k: v for k, v in outcomes.items() if not k.endswith((" 200", " 101"))}
    assert not failures, f"auth failures during the rotation: {failures} (of {dict(outcomes)})"
    assert outcomes["chat 101"] >= 20 and outcomes["me 200"] >= 20, dict(outcomes)
    assert set(signed_by) == {old_kid, new_kid}, dict(signed_by)


async def test_veza_keys_rotates_a_local_keys_directory(make_api: ServerFactory, tmp_path: Path) -> None:
    """`veza up`'s keys directory: the command runs the operator's stages itself, in the foreground."""
    keys_dir = tmp_path / "jwt-keys"
    write_keys(keys_dir, [generate_signing_key()])
    server = await make_api(jwt_keys_dir=keys_dir)
    user = await server.client.register_and_login()
    old_kid, old_access = kid(user["access_token"]), user["access_token"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "veza_cli.main", "keys", "rotate", "--keys-dir", str(keys_dir), "--propagation",
        str(int(RECHECK) + 1), "--overlap", "2", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    communicate = asyncio.create_task(proc.communicate())
    refused_while_published = 0
    while not communicate.done():
        on_disk = old_kid in (keys_dir / "jwks.json").read_text()  # before the request: the API may lag, not lead
        status = (await server.client.as_user(old_access).get("/api/v1/me")).status
        refused_while_published += on_disk and status != 200
        await asyncio.sleep(0.2)
    out, err = await communicate
    assert proc.returncode == 0, err.decode()
    assert refused_while_published == 0
    stages = out.decode().splitlines()
    assert len(stages) == 3 and " published: " in stages[0] and " signs from now" in stages[1] \
        and " retired: " in stages[2], stages
    new_kid = json.loads((keys_dir / "signing-keys.json").read_text())["keys"][0]["kid"]
    assert new_kid != old_kid and old_kid not in (keys_dir / "jwks.json").read_text()
    await wait_for(lambda: _token_of(server.client, user, new_kid), timeout=RECHECK + 3, interval=0.5,
                   message="the API signing with the new key")

    async def old_refused() -> bool:
        me = await server.client.as_user(old_access).get("/api/v1/me")
        return me.status == 401 and me.body["error"]["code"] == "token_key"

    await wait_for(old_refused, timeout=RECHECK + 3, interval=0.25, message="the retired key's token refused")
    status = subprocess.run([sys.executable, "-m", "veza_cli.main", "keys", "status", "--keys-dir", str(keys_dir)],
                            capture_output=True, text=True, check=True, timeout=60).stdout
    assert new_kid in status and "signing" in status and old_kid not in status
