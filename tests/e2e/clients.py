"""End clients of the e2e suite: everything goes through the front door with the platform's Host."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
from tests.e2e.conftest import Platform
from tests.support.chat import ChatClient

PASSWORD = "e2e-password-1"


class Account:
    """A registered, logged-in user of the platform's API."""

    def __init__(self, platform: Platform, name: str) -> None:
        self.platform = platform
        self.name = name
        self.email = f"{name.lower()}-{uuid.uuid4().hex[:8]}@example.com"
        self.access_token = ""
        self.user_id = ""

    async def register(self, session: aiohttp.ClientSession) -> Account:
        await self._post(session, "/api/v1/auth/register", 201,
                         {"email": self.email, "password": PASSWORD, "display_name": self.name})
        body = await self._post(session, "/api/v1/auth/login", 200, {"email": self.email, "password": PASSWORD})
        self.access_token, self.user_id = body["access_token"], body["user_id"]
        return self

    async def _post(self, session: aiohttp.ClientSession, path: str, status: int, payload: dict[str, Any]
                    ) -> dict[str, Any]:
        """As a well-behaved client: every test comes from one address, and the API limits logins and
        registrations per address (docs/api.md), so a 429 is waited out as its Retry-After says."""
        p = self.platform
        for _ in range(30):
            async with session.post(p.url(path), headers=p.headers, json=payload) as r:
                if r.status == 429:
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                    continue
                assert r.status == status, await r.text()
                body: dict[str, Any] = await r.json()
                return body
        raise AssertionError(f"{path}: still rate limited")

    async def service_token(self, session: aiohttp.ClientSession, audience: str) -> str:
        p = self.platform
        async with session.post(p.url("/api/v1/auth/service-token"), json={"audience": audience},
                                headers={**p.headers, "Authorization": f"Bearer {self.access_token}"}) as r:
            assert r.status == 200, await r.text()
            token: str = (await r.json())["token"]
            return token


async def connect_chat(platform: Platform, token: str, room: str = "general", after: int | None = None,
                       attempts: int = 1) -> ChatClient:
    """A WebSocket to the room through the front door (retried `attempts` times while a pod goes)."""
    for attempt in range(attempts):
        session = aiohttp.ClientSession()
        url = platform.url(f"/chat/{room}/ws") + (f"?after={after}" if after is not None else "")
        try:
            ws = await session.ws_connect(url, protocols=("veza.chat.v1", f"bearer.{token}"),
                                          headers=platform.headers, heartbeat=10)
            client = ChatClient(ws, session)
            client.welcome = await client.expect("welcome")
            return client
        except (aiohttp.ClientError, ConnectionError, TimeoutError):
            await session.close()
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


async def chat_worker_connections(platform: Platform) -> dict[str, float]:
    """Open WebSockets per chat pod, read from each pod's own /metrics (kubectl exec, not pod IPs)."""
    counts: dict[str, float] = {}
    for pod in platform.ready_pods("app.kubernetes.io/component=chat"):
        metrics = await asyncio.to_thread(
            platform.kubectl, "exec", pod, "--", "python", "-c",
            "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:8080/metrics').read().decode())")
        counts[pod] = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                          if line.startswith("veza_chat_connections"))
    return counts


def message_texts(client: ChatClient) -> list[tuple[int, Any]]:
    return [(f["seq"], f.get("text")) for f in client.frames if f["type"] == "event" and f["kind"] == "message"]
