"""Fixtures of the API tests: a migrated database of its own, real Redis and S3, a
key Secret directory, and API servers on loopback built from ApiSettings."""

from __future__ import annotations

import asyncio
import functools
import io
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from aiosmtpd.controller import Controller

from tests.support.api import ADMIN_EMAIL, ISSUER, ApiServer, Client, Inbox, ServerFactory, write_keys
from tests.support.db import fresh_database
from veza_api.app import create_api_app
from veza_api.settings import ApiSettings
from veza_core.keys import generate_signing_key
from veza_local.services import PostgresService, RedisService, S3Service, free_port


@pytest.fixture(scope="session")
async def api_database(postgres: PostgresService) -> str:
    return await fresh_database(postgres, "api")


@pytest.fixture(scope="session")
def s3_env(s3: S3Service) -> S3Service:
    os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = s3.access_key, s3.secret_key
    return s3


@pytest.fixture(scope="session")
def mailbox() -> Iterator[tuple[Controller, Inbox]]:
    """A real SMTP server (aiosmtpd) every API server of the tests mails to, unless told otherwise."""
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, inbox
    controller.stop()


@pytest.fixture(scope="session")
async def make_api(api_database: str, redis: RedisService, s3_env: S3Service, mailbox: tuple[Controller, Inbox],
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
            "smtp_host": "127.0.0.1", "smtp_port": mailbox[0].port, "public_url": "https://veza.test",
        }
        values.update(overrides)
        settings = ApiSettings.model_validate(values)
        server = TestServer(create_api_app(settings), host="127.0.0.1", port=port)
        await server.start_server()
        session = aiohttp.ClientSession()
        started.append((server, session))
        base = str(server.make_url("")).rstrip("/")
        inbox = mailbox[1] if settings.smtp_host == "127.0.0.1" and settings.smtp_port == mailbox[0].port else None
        return ApiServer(Client(base, session, inbox=inbox), settings, keys_dir, api_database,
                         stop=functools.partial(_close, server, session))

    yield make
    await _close_all(started)


async def _close(server: TestServer, session: aiohttp.ClientSession) -> None:
    await session.close()  # both idempotent: a server a test stopped is stopped again at the end
    await server.close()


async def _close_all(started: list[tuple[TestServer, aiohttp.ClientSession]], timeout: float = 60.0) -> None:
    """Stops the session's API servers together; one that will not stop names the tasks it waits for, rather
    than leaving the session's last test to time out."""
    closing = [asyncio.create_task(_close(server, session)) for server, session in started]
    if not closing:
        return
    done, pending = await asyncio.wait(closing, timeout=timeout)
    if pending:
        stuck = [task for task in asyncio.all_tasks() if not task.done() and task is not asyncio.current_task()]
        stacks = io.StringIO()
        for task in stuck:
            task.print_stack(limit=8, file=stacks)
        pytest.fail(f"{len(pending)} API servers still stopping after {timeout:.0f} s; tasks running:\n"
                    f"{stacks.getvalue()}")
    for task in done:
        task.result()


@pytest.fixture(scope="session")
async def api_server(make_api: ServerFactory) -> ApiServer:
    return await make_api()


@pytest.fixture
def client(api_server: ApiServer) -> Client:
    return Client(api_server.client.base, api_server.client.session, inbox=api_server.client.inbox)


@pytest.fixture(scope="session")
async def admin(api_server: ApiServer) -> Client:
    """A client logged in as the platform's bootstrap admin."""
    base = Client(api_server.client.base, api_server.client.session, inbox=api_server.client.inbox)
    tokens = await base.register_and_login(ADMIN_EMAIL, name="Root")  # confirmed by mail: admin from then on
    return base.as_user(tokens["access_token"])
