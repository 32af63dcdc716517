"""Fixtures of the API tests: a migrated database of its own, real Redis and S3, a
key Secret directory, and API servers on loopback built from ApiSettings."""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from veza_api.app import create_api_app
from veza_api.settings import ApiSettings
from veza_core.db import migrate
from veza_core.keys import generate_signing_key, secret_data
from veza_local.services import PostgresService, RedisService, S3Service

from .openapi_check import check_response

ISSUER = "https://veza.test"
ADMIN_EMAIL = "root@veza.test"
PASSWORD = "correct horse battery staple"


@dataclass
class Reply:
    status: int
    headers: Any
    body: Any


@dataclass
class Client:
    """An HTTP client for one API server; every answer is checked against the OpenAPI document."""

    base: str
    session: aiohttp.ClientSession
    token: str | None = None
    ip: str = field(default_factory=lambda: "10." + ".".join(str(secrets.randbelow(250)) for _ in range(3)))

    def as_user(self, token: str | None) -> Client:
        return Client(self.base, self.session, token, self.ip)

    async def call(self, method: str, path: str, *, json_body: Any = None, data: bytes | None = None,
                   headers: dict[str, str] | None = None, check: bool = True, **params: str) -> Reply:
        sent = {"X-Forwarded-For": self.ip, **(headers or {})}
        if self.token:
            sent.setdefault("Authorization", f"Bearer {self.token}")
        kwargs: dict[str, Any] = {"headers": sent, "params": params or None, "allow_redirects": False}
        if json_body is not None:
            kwargs["json"] = json_body
        if data is not None:
            kwargs["data"] = data
        async with self.session.request(method, self.base + path, **kwargs) as resp:
            raw = await resp.read()
            body: Any = json.loads(raw) if raw and resp.content_type == "application/json" else raw
            if check:
                check_response(method, path, resp.status, body)
            return Reply(resp.status, resp.headers, body)

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return await self.call("POST", path, json_body=body, **kw)

    async def put(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return await self.call("PUT", path, json_body=body, **kw)

    async def patch(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return await self.call("PATCH", path, json_body=body, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.call("DELETE", path, **kw)

    async def register_and_login(self, email: str | None = None, name: str = "Tester") -> dict[str, Any]:
        email = email or f"user-{uuid.uuid4().hex[:10]}@veza.test"
        made = await self.post("/api/v1/auth/register", {"email": email, "password": PASSWORD, "display_name": name})
        assert made.status in (201, 409), made.body
        login = await self.post("/api/v1/auth/login", {"email": email, "password": PASSWORD})
        assert login.status == 200, login.body
        return {**login.body, "email": email}


@dataclass
class ApiServer:
    client: Client
    settings: ApiSettings
    keys_dir: Path
    database_url: str


@pytest.fixture(scope="session")
async def api_database(postgres: PostgresService) -> str:
    name = f"api_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(postgres.url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = postgres.url.rsplit("/", 1)[0] + f"/{name}"
    await migrate(url)
    return url


@pytest.fixture(scope="session")
def s3_env(s3: S3Service) -> S3Service:
    import os

    os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = s3.access_key, s3.secret_key
    return s3


def write_keys(directory: Path, keys: list[dict[str, Any]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in secret_data(keys).items():
        tmp = directory / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(directory / name)  # atomic, like a Secret volume's symlink swap


ServerFactory = Callable[..., Awaitable[ApiServer]]


@pytest.fixture(scope="session")
async def make_api(api_database: str, redis: RedisService, s3_env: S3Service,
                   tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServerFactory]:
    """Starts API servers (settings overridable); all stopped at the end of the session."""
    started: list[tuple[TestServer, aiohttp.ClientSession]] = []

    async def make(port: int | None = None, **overrides: Any) -> ApiServer:
        keys_dir = tmp_path_factory.mktemp("jwt-keys")
        write_keys(keys_dir, [generate_signing_key()])
        values: dict[str, Any] = {
            "platform": f"t{uuid.uuid4().hex[:8]}", "database_url": api_database, "redis_url": redis.url,
            "s3_endpoint": s3_env.url, "s3_bucket": "veza-api-test", "jwt_issuer": ISSUER, "jwt_keys_dir": keys_dir,
            "bootstrap_admin_email": ADMIN_EMAIL, "trusted_proxies": 1, "cors_origins": "https://app.veza.test",
            "argon2_memory_kib": 8 * 1024, "argon2_time_cost": 1,  # tests: cheaper hashes, same algorithm
            # Generous limits by default; the rate-limit tests start servers with tight ones.
            "rate_login_per_minute": 600, "rate_login_burst": 50, "rate_ip_per_second": 1000,
            "rate_ip_burst": 1000, "rate_user_per_second": 1000, "rate_user_burst": 1000, "shutdown_grace_seconds": 1,
        }
        values.update(overrides)
        settings = ApiSettings.model_validate(values)
        server = TestServer(create_api_app(settings), host="127.0.0.1", port=port)
        await server.start_server()
        session = aiohttp.ClientSession()
        started.append((server, session))
        base = str(server.make_url("")).rstrip("/")
        return ApiServer(Client(base, session), settings, keys_dir, api_database)

    yield make
    for server, session in started:
        await session.close()
        await server.close()


@pytest.fixture(scope="session")
async def api_server(make_api: ServerFactory) -> ApiServer:
    return await make_api()


@pytest.fixture
def client(api_server: ApiServer) -> Client:
    return Client(api_server.client.base, api_server.client.session)


@pytest.fixture(scope="session")
async def admin(api_server: ApiServer) -> Client:
    """A client logged in as the platform's bootstrap admin."""
    base = Client(api_server.client.base, api_server.client.session)
    tokens = await base.register_and_login(ADMIN_EMAIL, name="Root")
    return base.as_user(tokens["access_token"])
