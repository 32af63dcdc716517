"""`veza up` as a subprocess: the Ingress routes on one port, workers wired by the operator's code, Ctrl-C.

One platform from examples/ is started for the module (temp data dir, free port); the
last tests stop it with SIGINT and start it again to check persistence, --reset and the
Redis-less mode.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import shutil
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import waiting
from tests.support.audio import decode_pcm, frequencies_over_time, sine
from tests.support.stream import open_stream, read_body
from tests.support.up import EXAMPLES, Up, alive, descendants
from veza_core.auth import AUDIENCE_CHAT, TokenIssuer
from veza_core.keys import KeySet
from veza_local import crfiles
from veza_local.controlplane import wait_for
from veza_operator import wiring
from veza_operator.models import VezaPlatformSpec

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("up") / "data"


@dataclass
class Answer:
    path: str
    printed: bool  # the URL was printed before this request was sent
    status: int | None  # None: nothing listened yet
    retry_after: str | None
    content_type: str | None


def watch_startup(up: Up, answers: list[Answer], stop: threading.Event) -> None:
    """What a client polling the entry point gets while `veza up` starts, until a while after the URL is out."""
    after = 0
    while not stop.is_set() and after < 20 and up.proc.poll() is None:
        for path, accept in (("/api/v1/rooms", "application/json"), ("/", "text/html")):
            printed = "Veza is up:" in up.output()
            after += printed
            request = urllib.request.Request(up.url + path, headers={"Accept": accept})  # noqa: S310 - loopback
            try:
                with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - loopback
                    answers.append(Answer(path, printed, resp.status, resp.headers.get("Retry-After"),
                                          resp.headers.get_content_type()))
            except urllib.error.HTTPError as exc:
                answers.append(Answer(path, printed, exc.code, exc.headers.get("Retry-After"),
                                      exc.headers.get_content_type()))
            except OSError:
                answers.append(Answer(path, printed, None, None, None))
        time.sleep(0.05)  # the pace of a polling client: what it records is the point, not a wait


@pytest.fixture(scope="module")
def startup() -> list[Answer]:
    return []


@pytest.fixture(scope="module")
def running(data_dir: Path, startup: list[Answer]) -> Iterator[Up]:
    up = Up(data_dir)
    stop = threading.Event()
    watcher = threading.Thread(target=watch_startup, args=(up, startup, stop), daemon=True)
    watcher.start()
    try:
        up.wait_ready()
        watcher.join(30)
        yield up
    finally:
        stop.set()
        up.kill()


async def login(http: aiohttp.ClientSession, base: str, email: str, *, register: bool = True) -> dict[str, str]:
    if register:
        async with http.post(f"{base}/api/v1/auth/register",
                             json={"email": email, "password": PASSWORD, "display_name": email.split("@")[0]}) as r:
            assert r.status == 202, await r.text()
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


def test_nothing_is_served_before_the_url_and_no_502_after(running: Up, startup: list[Answer]) -> None:
    """Until every worker is ready the entry point answers 503 with Retry-After (the page, too: a browser gets a
    page that reloads itself); from the moment the URL is printed, the API and the page answer."""
    before = [a for a in startup if not a.printed]
    after = [a for a in startup if a.printed]
    assert any(a.status == 503 for a in before), before  # the gate was seen, not just a fast start
    for path in ("/", "/api/v1/rooms"):
        # Nothing listening, then 503s, then 200s (the last ones may be sent just before the URL is printed).
        statuses = [a.status for a in startup if a.path == path]
        assert set(statuses) <= {None, 503, 200}, statuses
        first_ok = statuses.index(200)
        assert set(statuses[first_ok:]) == {200} and None not in statuses[statuses.index(503):], statuses
    for a in before:
        if a.status == 503:
            assert a.retry_after == "1", a
            assert a.content_type == ("text/html" if a.path == "/" else "application/json"), a
    assert len(after) >= 10 and all(a.status == 200 for a in after), after


def _handshake_headers(*protocols: str) -> dict[str, str]:
    headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(secrets.token_bytes(16)).decode()}
    if protocols:
        headers["Sec-WebSocket-Protocol"] = ", ".join(protocols)
    return headers


async def test_chat_refusals_arrive_intact_through_the_entry_point(running: Up) -> None:
    """The chat worker refuses a WebSocket before the upgrade with a status and a JSON error (docs/chat-protocol.md);
    through the entry point the client gets exactly that answer."""
    issuer = TokenIssuer(KeySet(running.data_dir / "jwt-keys"), issuer=running.url)
    stranger = TokenIssuer(KeySet(running.data_dir / "jwt-keys"), issuer="https://elsewhere.example")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{running.url}/api/v1/auth/login",
                             json={"email": "dev@veza.local", "password": "veza-dev-password"}) as r:
            api_token = (await r.json())["access_token"]  # audience veza-api
        cases = [
            ((), 401, "token_missing"),
            (("veza.chat.v1", "bearer.not-a-jwt"), 401, "token_malformed"),
            (("veza.chat.v1", f"bearer.{api_token}"), 401, "token_audience"),
            (("veza.chat.v1", f"bearer.{issuer.issue('u1', audience=AUDIENCE_CHAT, ttl=-60)}"), 401,
             "token_expired"),
            (("veza.chat.v1", f"bearer.{stranger.issue('u1', audience=AUDIENCE_CHAT)}"), 401, "token_issuer"),
            (("veza.chat.v1", f"bearer.{issuer.issue('u1', audience=AUDIENCE_CHAT, room='other')}"), 403,
             "token_room"),
        ]
        direct = f"http://127.0.0.1:{running.worker_ports()['chat-general']}"
        for protocols, status, code in cases:
            answers = []
            for base in (running.url, direct):
                async with http.get(f"{base}/chat/general/ws", headers=_handshake_headers(*protocols)) as r:
                    answers.append((r.status, r.reason, r.content_type, "X-Request-Id" in r.headers, await r.read()))
            through, worker = answers
            assert worker[0] == status and json.loads(worker[4])["error"]["code"] == code, (code, worker)
            assert through == worker, code


def _broadcast_command(port: int, password: str, mp3: Path) -> list[str]:
    """The command docs/local.md gives, quieter."""
    ffmpeg = shutil.which("ffmpeg")
    assert ffmpeg, "ffmpeg is needed (Debian package; hack/bootstrap.sh installs it)"
    return [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-re", "-i", str(mp3), "-c", "copy",
            "-ice_name", "Live from ffmpeg", "-f", "mp3", f"icecast://source:{password}@127.0.0.1:{port}/stream/radio/source"]


async def test_ffmpeg_broadcasts_through_the_entry_point(running: Up, tmp_path: Path) -> None:
    """ffmpeg's icecast:// output (PUT, `Expect: 100-continue`, a body read until it hangs up) goes on air through
    the URL `veza up` prints, with the example channel's password from its Secret; a wrong one gets a 401 that
    ffmpeg reports, before it sends any audio."""
    password = crfiles.load([EXAMPLES]).secrets["radio-source"]["password"]
    mp3 = tmp_path / "live.mp3"
    mp3.write_bytes(sine(1000, 4.0))

    wrong = await asyncio.create_subprocess_exec(*_broadcast_command(running.port, "wrong", mp3),
                                                 stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(wrong.communicate(), 20)
    assert wrong.returncode != 0 and b"401 Unauthorized" in err, err

    status, headers, reader, writer = await open_stream("127.0.0.1", running.port, "/stream/radio/mp3-128")
    assert status == 200
    listening = asyncio.create_task(read_body(reader, headers, 10**9, 8.0))
    await asyncio.sleep(1.0)  # the listener hears the playlist first, then the switch to the live source
    ffmpeg = await asyncio.create_subprocess_exec(*_broadcast_command(running.port, password, mp3),
                                                  stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)

    async def now_playing() -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.get(f"{running.url}/stream/radio/now-playing") as r:
            return dict(await r.json())

    async def on_air() -> dict[str, Any] | None:
        playing = await now_playing()
        return playing if playing["source"] == "live" else None

    playing = await waiting.wait_for(on_air, timeout=10, interval=0.1, message="the broadcast on air")
    assert playing["title"] == "Live from ffmpeg", playing
    _, err = await asyncio.wait_for(ffmpeg.communicate(), 20)
    assert ffmpeg.returncode == 0, err
    body = await listening
    writer.close()
    freqs = frequencies_over_time(*decode_pcm(body, "mp3"), 0.25)
    assert sum(abs(f - 1000) < 20 for f in freqs) >= 8, freqs  # ~3 s of the broadcast reached the listener
    lines = [json.loads(line) for line in (running.data_dir / "logs" / "stream-radio.log").read_text().splitlines()
             if line.startswith("{")]
    ended = [line for line in lines if line.get("msg") == "live source disconnected"]
    assert ended and ended[-1]["bytes"] >= 0.95 * mp3.stat().st_size and ended[-1]["error"] is None, ended
    sources = [line["status"] for line in lines if line.get("path") == "/stream/radio/source"]
    assert sources[-2:] == [401, 200], sources


def _hang_up(port: int, path: str, *, version: str = "1.1", headers: str = "", reset: bool = False,
             stall: float = 0.0) -> None:
    """A listener that goes away: after the first bytes, with a FIN or a reset, or after not reading for a while."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        if stall:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(f"GET {path} HTTP/{version}\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode())
        if stall:
            time.sleep(stall)
        else:
            assert b" 200 " in s.recv(100)
        if reset:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_listeners_that_disconnect_leave_no_traceback(running: Up) -> None:
    """Listeners going away is normal: neither the entry point nor the stream worker logs a traceback for it."""
    worker = running.worker_ports()["stream-radio"]
    with urllib.request.urlopen(f"{running.url}/stream/radio/hls/mp3-128/index.m3u8") as resp:  # noqa: S310
        segment = [line for line in resp.read().decode().splitlines() if line and not line.startswith("#")][-1]
    for port in (running.port, worker):
        for path in ("/stream/radio/mp3-128", "/stream/radio/opus-96", f"/stream/radio/hls/mp3-128/{segment}"):
            _hang_up(port, path)
            _hang_up(port, path, reset=True)
            _hang_up(port, path, version="1.0")
            _hang_up(port, path, headers="Icy-MetaData: 1\r\n", reset=True)
        _hang_up(port, "/stream/radio/mp3-128", stall=2.0)
    time.sleep(1.0)  # what the servers would log about the last hang-ups: nothing is waited for, absence is checked
    logs = {"veza up": running.output()} | {p.name: p.read_text() for p in (running.data_dir / "logs").glob("*.log")}
    for name, text in logs.items():
        assert "Traceback" not in text and "Error handling request" not in text, (name, text[-3000:])


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
        api_only = {"VEZA_BOOTSTRAP_ADMIN_EMAIL", "VEZA_RATE_LOGIN_BURST", "VEZA_MAIL_DIR"}
        extra = api_only if component == "api" else set()
        assert veza_vars == set(cluster) | extra | {"VEZA_HTTP_HOST"}, component
        for key, value in cluster.items():
            if key in overrides or key in connections:
                continue
            if isinstance(value, wiring.SecretValue):  # the example channel's source password, from its Secret
                value = crs.secrets[value.secret][value.key]
            assert env[key] == value, (component, key)
        if component == "stream":
            assert env["VEZA_SOURCE_PASSWORD"] == crs.secrets["radio-source"]["password"]
        assert env["VEZA_PUBLIC_URL"] == env["VEZA_JWT_ISSUER"] == running.url
        assert env["VEZA_HTTP_HOST"] == "127.0.0.1"
        assert env["VEZA_DATABASE_URL"].startswith("postgresql://postgres@127.0.0.1:")
        assert env["VEZA_S3_ENDPOINT"].startswith("http://127.0.0.1:")
        assert Path(env["VEZA_JWT_KEYS_DIR"]) == running.data_dir.resolve() / "jwt-keys"
        if resource is not None:
            assert json.loads(env["VEZA_RESOURCE_SPEC"]) == wiring.worker_spec(resource.spec)


def test_a_crashed_worker_is_503_until_restarted(running: Up) -> None:
    """While a crashed worker is restarted (as its Deployment would be), its route answers 503 with Retry-After,
    not 502, then the worker answers again."""
    os.kill(_worker_pid(running, "chat"), 9)
    seen: list[tuple[int, str | None]] = []

    def history() -> urllib.error.HTTPError | int:
        try:
            with urllib.request.urlopen(f"{running.url}/chat/general/history", timeout=5) as resp:  # noqa: S310
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc

    def refused() -> bool:
        answer = history()
        if isinstance(answer, int):
            return False
        seen.append((answer.code, answer.headers.get("Retry-After")))
        if answer.code == 503:
            assert json.loads(answer.read())["error"]["code"] == "upstream_unavailable"
        return answer.code == 503

    with contextlib.suppress(TimeoutError):
        wait_for(refused, timeout=5, interval=0.02, message="a 503 while the worker is down")
    assert (503, "1") in seen and 502 not in [s for s, _ in seen], seen

    def answered() -> int | None:
        answer = history()
        status = answer if isinstance(answer, int) else answer.code
        return status if status != 503 else None

    # The restarted worker itself answers: 401, no token.
    assert wait_for(answered, timeout=60, message="the restarted worker answering") == 401
    assert "chat-general exited with -9; restarting" in running.output()


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
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: not any(alive(p) for p in below), timeout=20, message="the orphans gone")
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

