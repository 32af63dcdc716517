"""Helpers of the chat tests: chat workers (real `veza chat` processes, or the app served in the
test's own event loop when a test hands it settings or a clock), a client that validates every
frame it sends or receives against docs/schemas/chat/v1, and the test constants."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from referencing import Registry, Resource

from tests.support.waiting import wait_for
from veza_chat.app import create_app
from veza_chat.settings import ChatSettings
from veza_chat.worker import WORKER
from veza_core.auth import AUDIENCE_CHAT, TokenIssuer
from veza_local.services import NatsService, free_port

ISSUER = "https://veza.test"
# Tests send quickly: the default room allows it (limits have their own tests).
FAST_SPEC = {"limits": {"messagesPerMinute": 1_000_000}}
SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas" / "chat" / "v1"
NATS_AUTHORIZATION = Path(__file__).resolve().parents[2] / "examples" / "nats" / "authorization.conf"
NATS_PASSWORDS = {"VEZA_NATS_API_PASSWORD": "api-" + uuid.uuid4().hex,
                  "VEZA_NATS_CHAT_PASSWORD": "chat-" + uuid.uuid4().hex,
                  "VEZA_NATS_STREAM_PASSWORD": "stream-" + uuid.uuid4().hex}


def _schemas() -> tuple[jsonschema.Draft202012Validator, jsonschema.Draft202012Validator,
                        jsonschema.Draft202012Validator]:
    docs = {name: json.loads((SCHEMAS / name).read_text())
            for name in ("client-frame.json", "server-frame.json", "history-response.json")}
    registry: Registry = Registry().with_resources(
        [(doc["$id"], Resource.from_contents(doc)) for doc in docs.values()])
    return tuple(jsonschema.Draft202012Validator(docs[n], registry=registry)  # type: ignore[return-value]
                 for n in ("client-frame.json", "server-frame.json", "history-response.json"))


CLIENT_SCHEMA, SERVER_SCHEMA, HISTORY_SCHEMA = _schemas()


class ChatWorker:
    """One `veza chat` process on a random port (`veza chat --pool` with `pool`)."""

    def __init__(self, env: dict[str, str], log_path: Path, *, pool: bool = False) -> None:
        self.pool = pool
        self.port = free_port()
        self.env = {**os.environ, **env, "VEZA_HTTP_HOST": "127.0.0.1", "VEZA_HTTP_PORT": str(self.port)}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ChatWorker:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        args = ["chat", "--pool"] if self.pool else ["chat"]
        self.proc = subprocess.Popen([sys.executable, "-m", "veza_cli.main", *args], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        return self

    async def ready(self, timeout: float = 30.0) -> ChatWorker:
        async with aiohttp.ClientSession() as http:

            async def answers_ready() -> bool:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"chat worker exited {self.proc.returncode}:\n{self.log()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(self.url + "/readyz") as resp:
                        return resp.status == 200
                return False

            try:
                await wait_for(answers_ready, timeout=timeout, interval=0.1, message="chat worker ready")
            except AssertionError:
                raise RuntimeError(f"chat worker not ready:\n{self.log()}") from None
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)


class InProcessWorker:
    """The chat app served in the test's own event loop, built from a settings object and a clock."""

    def __init__(self, settings: ChatSettings, clock: Callable[[], float]) -> None:
        self.app = create_app(settings, clock=clock)
        self.runner = web.AppRunner(self.app, shutdown_timeout=settings.shutdown_grace_seconds)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 30.0) -> InProcessWorker:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        await wait_for(self.app[WORKER].booted.is_set, timeout=timeout, message="chat service booted")
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()


Worker = ChatWorker | InProcessWorker


class ChatClient:
    """An aiohttp WebSocket client that checks every frame against the JSON Schemas."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: aiohttp.ClientSession) -> None:
        self.ws = ws
        self.session = session
        self.frames: list[dict[str, Any]] = []
        self.consumed: set[int] = set()  # indexes of frames `expect` already returned
        self.welcome: dict[str, Any] = {}
        self.close_frame_code: int | None = None

    async def send(self, frame: dict[str, Any]) -> None:
        CLIENT_SCHEMA.validate(frame)
        await self.ws.send_str(json.dumps(frame))

    @property
    def close_code(self) -> int | None:
        """The code the server's close frame carried once `recv` saw it; else aiohttp's (1006 when it came first
        to know that the server hung up)."""
        return self.close_frame_code if self.close_frame_code is not None else self.ws.close_code

    async def recv(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """The next frame, or None when the socket closed."""
        msg = await self.ws.receive(timeout=timeout)
        if msg.type is aiohttp.WSMsgType.CLOSE:
            # The code the server's close frame carried. `ws.close_code` may say 1006 instead: aiohttp's client
            # answers the close frame and overwrites the code when the server has already hung up.
            self.close_frame_code = int(msg.data)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            return None
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        frame = json.loads(msg.data)
        SERVER_SCHEMA.validate(frame)
        self.frames.append(frame)
        return frame

    async def expect(self, frame_type: str, /, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        for i, frame in enumerate(self.frames):
            matches = frame["type"] == frame_type and all(frame.get(k) == v for k, v in match.items())
            if i not in self.consumed and matches:
                self.consumed.add(i)
                return frame
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {frame_type} frame matching {match}; got {self.frames[-5:]}")
            try:
                frame = await self.recv(left)
            except TimeoutError:
                raise TimeoutError(f"no {frame_type} frame matching {match}; got {self.frames[-5:]}") from None
            if frame is None:
                raise ConnectionError(f"closed ({self.ws.close_code}) while waiting for {frame_type}")
            if frame["type"] == frame_type and all(frame.get(k) == v for k, v in match.items()):
                self.consumed.add(len(self.frames) - 1)
                return frame

    def events(self) -> list[int]:
        """The seqs of the events received, in order: `event` frames and the events of `events` frames (batched)."""
        return [e["seq"] for f in self.frames if f["type"] in ("event", "events")
                for e in (f["events"] if f["type"] == "events" else [f])]

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()


class Chat:
    """What a test needs: workers, tokens and clients for one fresh room."""

    def __init__(self, tmp: Path, keys_dir: Path, issuer: TokenIssuer, services: dict[str, str]) -> None:
        self.tmp = tmp
        self.keys_dir = keys_dir
        self.issuer = issuer
        self.services = services
        self.room = "r" + uuid.uuid4().hex[:10]
        self.workers: list[ChatWorker] = []
        self.in_process: list[InProcessWorker] = []
        self.clients: list[ChatClient] = []

    def env(self, spec: dict[str, Any] | None = None, **extra: str) -> dict[str, str]:
        return {"VEZA_PLATFORM": "test", "VEZA_RESOURCE_NAME": self.room,
                "VEZA_RESOURCE_SPEC": json.dumps(spec if spec is not None else FAST_SPEC), "VEZA_JWT_ISSUER": ISSUER,
                "VEZA_JWT_KEYS_DIR": str(self.keys_dir), "VEZA_SHUTDOWN_GRACE_SECONDS": "5", **self.services, **extra}

    def settings(self, spec: dict[str, Any] | None = None, **fields: Any) -> ChatSettings:
        """The settings a worker of this room reads from `env(spec)`, with `fields` changed."""
        return ChatSettings.from_env(self.env(spec)).model_copy(update=fields)

    async def worker(self, spec: dict[str, Any] | None = None, **extra: str) -> ChatWorker:
        w = ChatWorker(self.env(spec, **extra), self.tmp / f"worker-{len(self.workers)}.log").start()
        self.workers.append(w)
        return await w.ready()

    async def pool_worker(self, **extra: str) -> ChatWorker:
        """A pool worker (`veza chat --pool`) of this test's platform: it serves the rooms the directory marks
        pooled (`declare_pooled`), this one among them once declared."""
        env = {k: v for k, v in self.env(**extra).items() if k not in ("VEZA_RESOURCE_NAME", "VEZA_RESOURCE_SPEC")}
        w = ChatWorker(env, self.tmp / f"worker-{len(self.workers)}.log", pool=True).start()
        self.workers.append(w)
        return await w.ready()

    async def serve(self, settings: ChatSettings, *, clock: Callable[[], float] = time.time) -> InProcessWorker:
        """A worker in this process (no kill, no SIGTERM): for tests that pass settings or a clock."""
        w = InProcessWorker(settings, clock)
        self.in_process.append(w)
        return await w.start()

    def token(self, user: str = "alice", **claims: Any) -> str:
        claims.setdefault("name", user.title())
        return self.issuer.issue(user, audience=claims.pop("audience", AUDIENCE_CHAT), **claims)

    async def connect(self, worker: Worker, user: str = "alice", *, after: int | None = None,
                      token: str | None = None, via_header: bool = False, batch: bool = False,
                      **claims: Any) -> ChatClient:
        token = token or self.token(user, **claims)
        session = aiohttp.ClientSession()
        query = {**({"after": str(after)} if after is not None else {}), **({"batch": "1"} if batch else {})}
        url = f"{worker.url}/chat/{self.room}/ws" + ("?" + "&".join(f"{k}={v}" for k, v in query.items())
                                                     if query else "")
        try:
            if via_header:
                ws = await session.ws_connect(url, protocols=("veza.chat.v1",),
                                              headers={"Authorization": f"Bearer {token}"})
            else:
                ws = await session.ws_connect(url, protocols=("veza.chat.v1", f"bearer.{token}"))
        except Exception:
            await session.close()
            raise
        client = ChatClient(ws, session)
        self.clients.append(client)
        client.welcome = await client.expect("welcome")
        return client

    async def close(self) -> None:
        for c in self.clients:
            with contextlib.suppress(Exception):
                await c.close()
        for w in self.workers:
            w.terminate()
        for ip in self.in_process:
            await ip.stop()
        self.clients.clear()  # closed, and stopped: a second close has nothing to do with them
        self.in_process.clear()
        for w in self.workers:
            if w.proc is not None:
                try:
                    w.proc.wait(10)
                except subprocess.TimeoutExpired:
                    w.kill()


class SteadySender:
    """A client that keeps sending while its room moves: on a close it reconnects (`connect(after)`: wherever the
    room lives now), resumes after the last seq it saw, and resends its unacknowledged send under the same cid —
    what docs/chat-protocol.md asks of clients. A refused handshake (503 while the room moves, or 404/502/504 while
    a front door has yet to apply a changed route: 404 for a route not loaded yet, 502 or 504 for a worker just
    gone) is retried for up to `retry_for` seconds, and counted by status in `handshake_refusals`."""

    def __init__(self, user: str, connect: Callable[[int], Awaitable[ChatClient]], *, retry_for: float = 30.0) -> None:
        self.user, self.connect, self.retry_for = user, connect, retry_for
        self.acked: dict[str, int] = {}  # cid -> seq
        self.seen: list[int] = []  # every event seq delivered to this user, across its connections, in order
        self.reconnects = 0
        self.sent = 0
        self.close_codes: list[int | None] = []
        self.refusals: list[str] = []
        self.handshake_refusals: collections.Counter[int] = collections.Counter()  # by status
        self.max_gap = 0.0  # longest time without an ack while sending
        self.stop = asyncio.Event()

    async def _connect(self) -> ChatClient:
        deadline = time.monotonic() + self.retry_for
        while True:
            try:
                return await self.connect(self.seen[-1] if self.seen else 0)
            except aiohttp.WSServerHandshakeError as exc:
                self.handshake_refusals[exc.status] += 1
                if exc.status not in (404, 502, 503, 504) or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def run(self) -> None:
        client = await self._connect()
        last_ack = time.monotonic()
        pending: str | None = None
        while not self.stop.is_set() or pending is not None:
            if pending is None:
                self.sent += 1
                pending = f"{self.user}-{self.sent}"
            try:
                await client.send({"type": "send", "cid": pending, "text": pending})
                while True:
                    try:
                        frame = await client.recv(10.0)
                    except TimeoutError:
                        raise AssertionError(f"{self.user}: no answer to {pending} within 10 s on "
                                             f"{client.welcome.get('session')}; last frames {client.frames[-3:]}"
                                             ) from None
                    if frame is None:
                        raise ConnectionError
                    if frame["type"] == "event":
                        self.seen.append(frame["seq"])
                    elif frame["type"] == "ack" and frame["cid"] == pending:
                        self.acked[pending] = frame["seq"]
                        pending = None
                        now = time.monotonic()
                        self.max_gap, last_ack = max(self.max_gap, now - last_ack), now
                        break
                    elif frame["type"] == "error" and frame.get("cid") == pending:
                        # Not stored (`shutting_down`: the room is leaving this worker): send it again, here
                        # or, once the socket closes, wherever the room went.
                        self.refusals.append(frame["code"])
                        await asyncio.sleep(0.05)
                        break
            except (ConnectionError, ConnectionResetError, aiohttp.ClientError) as exc:
                # The close code as read from the server's close frame (a send that raced it knows none).
                if isinstance(exc, ConnectionError) and not isinstance(exc, ConnectionResetError):
                    self.close_codes.append(client.close_frame_code)
                self.reconnects += 1
                with contextlib.suppress(Exception):
                    await client.close()  # its HTTP session too
                client = await self._connect()
            await asyncio.sleep(0.02)
        # Drain: everything committed so far reaches this socket too.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                frame = await client.recv(max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                break
            if frame is None:
                break
            if frame["type"] == "event":
                self.seen.append(frame["seq"])
        await client.close()


async def moved_under_load(database_url: str, room: str, senders: list[SteadySender],
                           move: Callable[[], Awaitable[Any]], *, before: float = 1.5, after: float = 2.0) -> None:
    """Let the senders run, `move` the room, let them run on, stop them; then every acknowledged send is stored
    once with the seq its ack said, nothing else is stored, and every sender saw every seq once, in order."""
    import asyncpg

    tasks = [asyncio.create_task(s.run()) for s in senders]
    await asyncio.sleep(before)
    await move()
    await asyncio.sleep(after)
    for s in senders:
        s.stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    conn = await asyncpg.connect(database_url)
    try:
        stored = {r["body"]: r["seq"] for r in await conn.fetch(
            "SELECT body, seq FROM chat_events WHERE room = $1 AND kind = 'message'", room)}
        count = await conn.fetchval("SELECT count(*) FROM chat_events WHERE room = $1", room)
    finally:
        await conn.close()
    acked = {cid: seq for s in senders for cid, seq in s.acked.items()}
    assert acked and stored == acked  # every acknowledged send stored once, with the seq its ack said
    assert count == len(stored)  # and nothing else (no duplicate under another seq)
    last = max(stored.values())
    for s in senders:
        assert s.reconnects >= 1, "the move closed every socket"
        assert s.seen == list(range(1, last + 1)), f"{s.user}: gapless, in order, nothing twice"


async def nats_subscribed(monitor_url: str, subject: str, timeout: float = 15.0) -> None:
    """Wait until some client of the NATS server whose monitoring endpoint is `monitor_url` subscribes to `subject`
    (a worker reports ready before its NATS subscriptions are in place)."""
    async with aiohttp.ClientSession() as http:

        async def listed() -> bool:
            async with http.get(f"{monitor_url}/connz?subs=1&limit=1024") as resp:
                connz = await resp.json()
            return any(subject in (c.get("subscriptions_list") or []) for c in connz.get("connections") or [])

        await wait_for(listed, timeout=timeout, interval=0.1, message=f"a subscription to {subject}")


async def metric(url: str, name: str, **labels: str) -> float:
    """The value of the sample `name` with exactly `labels` on the /metrics of the worker at `url` (0 when it has
    none yet)."""
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        text = await resp.text()
    return next((s.value for family in text_string_to_metric_families(text) for s in family.samples
                 if s.name == name and s.labels == labels), 0.0)


def authorized_nats(base: Path) -> NatsService:
    """A nats-server (not started) with the shipped authorization block, examples/nats/authorization.conf; the
    users' passwords are NATS_PASSWORDS."""
    service = NatsService(base, config="include ./authorization.conf\n", env=NATS_PASSWORDS)
    (service.dir / "authorization.conf").write_text(NATS_AUTHORIZATION.read_text())
    return service


async def publish_now_playing(nats_url: str, channel: str, title: str, *, platform: str = "test",
                              started_at: float | None = None, msg_id: str | None = None,
                              track_id: str | None = None, **credentials: str) -> dict[str, Any]:
    """A now-playing event published the way the stream worker publishes it (JetStream, the platform's channel
    stream, `Nats-Msg-Id` = the event's id unless `msg_id` says otherwise); returns the payload sent."""
    import nats

    from veza_core import events

    started = time.time() if started_at is None else started_at
    event = events.NowPlaying(v=1, id=f"{channel}:{round(started * 1000)}", channel=channel, title=title,
                              track_id=track_id, started_at=started, at=time.time())
    nc = await nats.connect(nats_url, **credentials)  # type: ignore[arg-type]
    try:
        js = nc.jetstream()
        await events.ensure_channels_stream(js, platform)
        await js.publish(events.CHANNEL_NOWPLAYING.subject(platform, channel), events.payload(event),
                         headers={"Nats-Msg-Id": msg_id or event.id})
    finally:
        await nc.close()
    return event.model_dump()


async def consumer_done(nats_url: str, durable: str, *, platform: str = "test", timeout: float = 15.0,
                        **credentials: str) -> None:
    """Wait until the durable consumer `durable` of the platform's channel stream has had every message it
    matches handled and acknowledged."""
    import nats

    from veza_core import events

    nc = await nats.connect(nats_url, **credentials)  # type: ignore[arg-type]
    try:
        js = nc.jetstream()

        async def settled() -> bool:
            try:
                info = await js.consumer_info(events.channels_stream(platform), durable)
            except nats.js.errors.NotFoundError:
                return False
            return info.num_pending == 0 and info.num_ack_pending == 0

        await wait_for(settled, timeout=timeout, interval=0.1, message=f"consumer {durable} settled")
    finally:
        await nc.close()
