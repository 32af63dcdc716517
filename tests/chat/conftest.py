"""Chat fixtures: real worker processes (`python -m veza_cli.main chat`) against real services,
and a client that validates every frame it sends or receives against docs/schemas/chat/v1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from referencing import Registry, Resource

from veza_core.auth import AUDIENCE_CHAT, TokenIssuer
from veza_core.keys import KeySet, generate_signing_key, secret_data
from veza_local.services import free_port

ISSUER = "https://veza.test"
# Tests send quickly: the default room allows it (limits have their own tests).
FAST_SPEC = {"limits": {"messagesPerMinute": 1_000_000}}
SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas" / "chat" / "v1"


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
    """One `veza chat` process on a random port."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.env = {**os.environ, **env, "VEZA_HTTP_HOST": "127.0.0.1", "VEZA_HTTP_PORT": str(self.port)}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ChatWorker:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen([sys.executable, "-m", "veza_cli.main", "chat"], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        return self

    async def ready(self, timeout: float = 30.0) -> ChatWorker:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"chat worker exited {self.proc.returncode}:\n{self.log()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(self.url + "/readyz") as resp:
                        if resp.status == 200:
                            return self
                await asyncio.sleep(0.1)
        raise RuntimeError(f"chat worker not ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)


class ChatClient:
    """An aiohttp WebSocket client that checks every frame against the JSON Schemas."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: aiohttp.ClientSession) -> None:
        self.ws = ws
        self.session = session
        self.frames: list[dict[str, Any]] = []
        self.consumed: set[int] = set()  # indexes of frames `expect` already returned
        self.welcome: dict[str, Any] = {}

    async def send(self, frame: dict[str, Any]) -> None:
        CLIENT_SCHEMA.validate(frame)
        await self.ws.send_str(json.dumps(frame))

    async def recv(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """The next frame, or None when the socket closed."""
        msg = await self.ws.receive(timeout=timeout)
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
        return [f["seq"] for f in self.frames if f["type"] == "event"]

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
        self.clients: list[ChatClient] = []

    def env(self, spec: dict[str, Any] | None = None, **extra: str) -> dict[str, str]:
        return {"VEZA_PLATFORM": "test", "VEZA_RESOURCE_NAME": self.room,
                "VEZA_RESOURCE_SPEC": json.dumps(spec if spec is not None else FAST_SPEC), "VEZA_JWT_ISSUER": ISSUER,
                "VEZA_JWT_KEYS_DIR": str(self.keys_dir), "VEZA_SHUTDOWN_GRACE_SECONDS": "5", **self.services, **extra}

    async def worker(self, spec: dict[str, Any] | None = None, **extra: str) -> ChatWorker:
        w = ChatWorker(self.env(spec, **extra), self.tmp / f"worker-{len(self.workers)}.log").start()
        self.workers.append(w)
        return await w.ready()

    def token(self, user: str = "alice", **claims: Any) -> str:
        claims.setdefault("name", user.title())
        return self.issuer.issue(user, audience=claims.pop("audience", AUDIENCE_CHAT), **claims)

    async def connect(self, worker: ChatWorker, user: str = "alice", *, after: int | None = None,
                      token: str | None = None, via_header: bool = False, **claims: Any) -> ChatClient:
        token = token or self.token(user, **claims)
        session = aiohttp.ClientSession()
        url = f"{worker.url}/chat/{self.room}/ws" + (f"?after={after}" if after is not None else "")
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
        for w in self.workers:
            if w.proc is not None:
                try:
                    w.proc.wait(10)
                except subprocess.TimeoutExpired:
                    w.kill()


@pytest.fixture(scope="session")
def jwt_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TokenIssuer]:
    directory = tmp_path_factory.mktemp("jwt")
    key = generate_signing_key()
    for name, content in secret_data([key]).items():
        (directory / name).write_text(content)
    return directory, TokenIssuer(KeySet.from_private_keys([key]), issuer=ISSUER)


@pytest.fixture
async def chat_factory(tmp_path: Path, jwt_keys: tuple[Path, TokenIssuer]) -> AsyncIterator[Callable[..., Chat]]:
    """Rooms on services the test chooses (private instances it may stop or kill)."""
    made: list[Chat] = []

    def make(**services: str) -> Chat:
        chat = Chat(tmp_path, jwt_keys[0], jwt_keys[1], services)
        made.append(chat)
        return chat

    yield make
    for chat in made:
        await chat.close()


@pytest.fixture
async def chat(chat_factory: Callable[..., Chat], postgres: Any, nats: Any, redis: Any) -> Chat:
    """A fresh room on the shared services."""
    return chat_factory(VEZA_DATABASE_URL=postgres.url, VEZA_NATS_URL=nats.url, VEZA_REDIS_URL=redis.url)
