"""`veza api` as a process, and the API with Redis gone."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.api import PASSWORD, ServerFactory, write_keys
from tests.support.waiting import wait_for
from veza_core.keys import generate_signing_key
from veza_local.services import LocalService, RedisService, S3Service, free_port


async def test_veza_api_serves_and_stops_gracefully(api_database: str, redis: RedisService, s3_env: S3Service,
                                                    tmp_path: Path) -> None:
    write_keys(tmp_path / "keys", [generate_signing_key()])
    port = free_port()
    env = {**os.environ, "VEZA_DATABASE_URL": api_database, "VEZA_REDIS_URL": redis.url,
           "VEZA_S3_ENDPOINT": s3_env.url, "VEZA_JWT_KEYS_DIR": str(tmp_path / "keys"), "VEZA_HTTP_HOST": "127.0.0.1",
           "VEZA_HTTP_PORT": str(port), "VEZA_JWT_ISSUER": "https://veza.test", "VEZA_SHUTDOWN_GRACE_SECONDS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "veza_cli.main", "api"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        async with aiohttp.ClientSession() as session:
            async def readiness() -> dict[str, Any] | None:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        return await resp.json() if resp.status == 200 else None
                except aiohttp.ClientError:
                    return None

            ready = await wait_for(readiness, timeout=15, interval=0.1, message="veza api ready")
            assert ready["checks"] == {"postgres": True, "s3": True, "signing_key": True}
            async with session.get(f"http://127.0.0.1:{port}/.well-known/jwks.json") as resp:
                assert resp.status == 200 and len((await resp.json())["keys"]) == 1
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.to_thread(proc.communicate, timeout=20)
        assert proc.returncode == 0
        # JSON access logs on stdout, with request ids.
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        jwks_log = next(entry for entry in lines if entry.get("path") == "/.well-known/jwks.json")
        assert jwks_log["component"] == "api" and jwks_log["status"] == 200 and jwks_log["request_id"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_api_keeps_working_while_redis_is_down(
        make_api: ServerFactory, service_factory: Callable[[type[LocalService]], LocalService]) -> None:
    private_redis = service_factory(RedisService)
    server = await make_api(redis_url=private_redis.url)
    client = server.client  # with the mailbox: the bootstrap admin's address is confirmed by its link
    tokens = await client.register_and_login()
    root = client.as_user((await client.register_and_login("root@veza.test"))["access_token"])
    assert (await root.put("/api/v1/admin/rooms/while-redis-is-down", {"title": "Down"})).status in (200, 201)
    me = client.as_user(tokens["access_token"])
    assert (await me.post("/api/v1/auth/logout")).status == 204

    private_redis.stop()
    # Rate limits fall back to process memory, revocation checks to PostgreSQL, counts to null.
    fresh = await client.post("/api/v1/auth/login", {"email": tokens["email"], "password": PASSWORD})
    assert fresh.status == 200
    assert (await client.as_user(fresh.body["access_token"]).get("/api/v1/me")).status == 200
    assert (await me.get("/api/v1/me")).status == 401, "a logged-out token stays refused without Redis"
    rooms = await client.get("/api/v1/rooms")
    counts = {r["name"]: r["member_count"] for r in rooms.body["rooms"]}
    assert rooms.status == 200 and counts["while-redis-is-down"] is None

    private_redis.start()
    again = await client.post("/api/v1/auth/login", {"email": tokens["email"], "password": PASSWORD})
    assert again.status == 200
