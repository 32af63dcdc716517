"""`veza up` as a subprocess: the Ingress routes on one port, workers wired by the operator's code, Ctrl-C.

One platform from examples/ is started for the module (temp data dir, free port); the
last tests stop it with SIGINT and start it again to check persistence, --reset and the
Redis-less mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.local.upproc import EXAMPLES, Up, alive, descendants
from veza_local import crfiles
from veza_operator import wiring
from veza_operator.models import VezaPlatformSpec

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("up") / "data"


@pytest.fixture(scope="module")
def running(data_dir: Path) -> Iterator[Up]:
    up = Up(data_dir)
    try:
        up.wait_ready()
        yield up
    finally:
        up.kill()


async def login(http: aiohttp.ClientSession, base: str, email: str, *, register: bool = True) -> dict[str, str]:
    if register:
        async with http.post(f"{base}/api/v1/auth/register",
                             json={"email": email, "password": PASSWORD, "display_name": email.split("@")[0]}) as r:
            assert r.status == 201, await r.text()
    async with http.post(f"{base}/api/v1/auth/login", json={"email": email, "password": PASSWORD}) as r:
        assert r.status == 200, await r.text()
        return dict(await r.json())


def test_progress_url_and_dev_login(running: Up) -> None:
    out = running.output()
    for part in ("CR files", "postgres", "nats", "redis", "s3", "migrations", "api", "chat-general",
                 "stream-radio", f"Veza is up: {running.url}/", "dev login: dev@veza.local / veza-dev-password"):
        assert part in out, out
    assert set(running.worker_ports()) >= {"api", "chat-general", "stream-radio"}


async def test_api_routes_through_the_entry_point(running: Up) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{running.url}/api/v1/rooms") as r:
            assert r.status == 200
            rooms = {room["name"]: room for room in (await r.json())["rooms"]}
        assert rooms["general"]["title"] == "General"  # declared in the API's directory from the ChatRoom file
        async with http.get(f"{running.url}/api/v1/channels/radio") as r:
            assert r.status == 200 and (await r.json())["title"] == "Veza Radio"
        async with http.get(f"{running.url}/.well-known/jwks.json") as r:
            assert r.status == 200 and (await r.json())["keys"]
        # The dev login is a platform admin.
        async with http.post(f"{running.url}/api/v1/auth/login",
                             json={"email": "dev@veza.local", "password": "veza-dev-password"}) as r:
            assert r.status == 200
            tokens = await r.json()
        async with http.get(f"{running.url}/api/v1/admin/users",
                            headers={"Authorization": f"Bearer {tokens['access_token']}"}) as r:
            assert r.status == 200, await r.text()


async def test_web_client_at_the_root(running: Up) -> None:
    """The entry point serves the page at `/`, and so does the API worker itself (as behind an Ingress)."""
    api = f"http://127.0.0.1:{running.worker_ports()['api']}"
    async with aiohttp.ClientSession() as http:
        for base in (running.url, api):
            async with http.get(f"{base}/") as r:
                assert r.status == 200 and r.content_type == "text/html"
                assert '<script type="module" src="/web/app.js">' in await r.text()
            async with http.get(f"{base}/web/app.js") as r:
                assert r.status == 200 and r.content_type == "text/javascript"
        async with http.get(f"{running.url}/web/config.json") as r:
            assert (await r.json())["rooms"]["general"]["channel"] == "radio"


async def test_chat_websocket_through_the_entry_point(running: Up) -> None:
    async with aiohttp.ClientSession() as http:
        tokens = await login(http, running.url, "alice@example.com")
        async with http.post(f"{running.url}/api/v1/auth/service-token", json={"audience": "veza-chat"},
                             headers={"Authorization": f"Bearer {tokens['access_token']}"}) as r:
            assert r.status == 200, await r.text()
            chat_token = (await r.json())["token"]
        async with http.ws_connect(f"{running.url}/chat/general/ws",
                                   protocols=("veza.chat.v1", f"bearer.{chat_token}")) as ws:
            assert ws.protocol == "veza.chat.v1"
            welcome = await ws.receive_json(timeout=10)
            assert welcome["type"] == "welcome" and welcome["room"]["name"] == "general"
            await ws.send_json({"type": "send", "cid": "c-1", "text": "hello through the entry point"})
            seen: dict[str, dict[str, object]] = {}
            while {"ack", "event"} - set(seen):
                frame = await ws.receive_json(timeout=10)
                seen.setdefault(frame["type"], frame)
            assert seen["event"]["text"] == "hello through the entry point"
        async with http.get(f"{running.url}/chat/general/history",
                            headers={"Authorization": f"Bearer {chat_token}"}) as r:
            assert r.status == 200
            assert any(e.get("text") == "hello through the entry point" for e in (await r.json())["events"])
        async with http.get(f"{running.url}/chat/nope/ws") as r:  # no such room: the API answers (no route)
            assert r.status == 404


async def test_stream_through_the_entry_point(running: Up) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{running.url}/stream/radio/now-playing") as r:
            assert r.status == 200
            assert (await r.json())["title"].endswith("Hz")  # a generated demo tone
        async with http.get(f"{running.url}/stream/radio/mp3-128") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("audio/mpeg")
            received = 0
            async with asyncio.timeout(15):
                async for chunk in r.content.iter_any():
                    received += len(chunk)
                    if received >= 32_000:
                        break
            assert received >= 32_000


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _worker_pid(up: Up, component: str) -> int:
    for pid in descendants(up.proc.pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"veza_local.launch" in cmd and cmd[cmd.index(b"veza_local.launch") + 1] == component.encode():
            return pid
    raise AssertionError(f"no {component} worker below veza up")


def test_workers_get_the_operators_environment(running: Up) -> None:
    """Same variables as the operator's pods (worker_env), only the documented local overrides differ."""
    crs = crfiles.load([EXAMPLES])
    platform = VezaPlatformSpec.model_validate(crs.platforms[0].spec)
    overrides = {"VEZA_HTTP_HOST", "VEZA_HTTP_PORT", "VEZA_PUBLIC_URL", "VEZA_JWT_ISSUER", "VEZA_JWT_KEYS_DIR"}
    connections = {"VEZA_DATABASE_URL", "VEZA_REDIS_URL", "VEZA_NATS_URL", "VEZA_S3_ENDPOINT", "AWS_ACCESS_KEY_ID",
                   "AWS_SECRET_ACCESS_KEY"}
    for component, resource in (("chat", crs.rooms[0]), ("stream", crs.channels[0]), ("api", None)):
        env = _environ(_worker_pid(running, component))
        cluster = wiring.worker_env("demo", "default", platform, component, resource.name if resource else None,
                                    resource.spec if resource else None)
        veza_vars = {k for k in env if k.startswith(("VEZA_", "AWS_"))}
        extra = {"VEZA_BOOTSTRAP_ADMIN_EMAIL", "VEZA_RATE_LOGIN_BURST"} if component == "api" else set()
        assert veza_vars == set(cluster) | extra | {"VEZA_HTTP_HOST"}, component
        for key, value in cluster.items():
            if key in overrides or key in connections:
                continue
            assert env[key] == value, (component, key)
        assert env["VEZA_PUBLIC_URL"] == env["VEZA_JWT_ISSUER"] == running.url
        assert env["VEZA_HTTP_HOST"] == "127.0.0.1"
        assert env["VEZA_DATABASE_URL"].startswith("postgresql://postgres@127.0.0.1:")
        assert env["VEZA_S3_ENDPOINT"].startswith("http://127.0.0.1:")
        assert Path(env["VEZA_JWT_KEYS_DIR"]) == running.data_dir.resolve() / "jwt-keys"
        if resource is not None:
            assert json.loads(env["VEZA_RESOURCE_SPEC"]) == wiring.worker_spec(resource.spec)


def test_a_second_up_on_the_same_data_dir_is_refused(running: Up) -> None:
    other = Up(running.data_dir)
    assert other.wait_exit(30) == 1
    assert "is in use by another veza up" in other.output()


def test_ctrl_c_stops_everything(running: Up) -> None:
    async def register() -> None:
        async with aiohttp.ClientSession() as http:
            await login(http, running.url, "kept@example.com")

    asyncio.run(register())
    status, below = running.interrupt()
    assert status == 0, running.output()
    assert len(below) >= 6  # postgres (and its backends), nats, redis, moto, api, chat, stream
    left = [pid for pid in below if alive(pid)]
    assert not left, f"processes left after Ctrl-C: {left}"
    assert "stopped in" in running.output()


def _path_without_redis(tmp: Path) -> str:
    """A PATH with every command of the system's PATH except redis-server."""
    bin_dir = tmp / "bin-without-redis"
    bin_dir.mkdir(exist_ok=True)
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            target = bin_dir / name
            if name != "redis-server" and not target.exists():
                target.symlink_to(os.path.join(directory, name))
    return str(bin_dir)


def test_data_is_kept_reset_wipes_it_and_redis_is_optional(running: Up, tmp_path: Path) -> None:
    assert running.proc.poll() is not None  # stopped by the previous test

    async def can_login(up: Up) -> int:
        async with aiohttp.ClientSession() as http, http.post(
                f"{up.url}/api/v1/auth/login", json={"email": "kept@example.com", "password": PASSWORD}) as r:
            return r.status

    again = Up(running.data_dir, env={"PATH": _path_without_redis(tmp_path)})
    try:
        again.wait_ready()
        out = again.output()
        assert "redis-server is not installed" in out and "in-process fallbacks" in out
        assert "initdb" not in out  # the PostgreSQL data directory was kept
        assert asyncio.run(can_login(again)) == 200
        status, below = again.interrupt()
        assert status == 0 and not [p for p in below if alive(p)]
    finally:
        again.kill()

    wiped = Up(running.data_dir, "--reset")
    try:
        wiped.wait_ready()
        assert "reset" in wiped.output() and "initdb" in wiped.output()
        assert asyncio.run(can_login(wiped)) == 401
        status, below = wiped.interrupt()
        assert status == 0 and not [p for p in below if alive(p)]
    finally:
        wiped.kill()


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        up = Up(tmp_path / "data", port=port)
        assert up.wait_exit(30) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in up.output() and "port in use" in up.output()
    assert not (tmp_path / "data" / "postgres").exists()  # nothing was started


def test_bad_yaml_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: veza.io/v1alpha1\nkind: ChatRoom\nmetadata: {name: x\nspec: {}\n")
    up = Up(tmp_path / "data", files=[bad])
    assert up.wait_exit(30) == 2
    assert f"{bad}:" in up.output() and "invalid YAML" in up.output()


def test_after_kill_9_nothing_is_left_and_the_next_run_starts(tmp_path: Path) -> None:
    first = Up(tmp_path / "data")
    below: set[int] = set()
    try:
        first.wait_ready()
        below = descendants(first.proc.pid)
        first.proc.kill()  # SIGKILL: no cleanup in veza up itself
        first.proc.wait(10)
        # Workers and services have the parent-death signal: they go by themselves.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(alive(p) for p in below):
            time.sleep(0.2)
        assert not [p for p in below if alive(p)], [Path(f"/proc/{p}/cmdline").read_bytes() for p in below
                                                     if alive(p)]
        second = Up(tmp_path / "data")  # same data dir: PostgreSQL recovers, the lock is free
        try:
            second.wait_ready()
            status, below_second = second.interrupt()
            assert status == 0
            left = [p for p in below | below_second if alive(p)]
            assert not left, f"processes left: {left}"
        finally:
            second.kill()
    finally:
        first.kill()
        for pid in below:  # orphans if the test failed half-way
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)

