"""Register, login, refresh rotation with family revocation, logout."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
import redis.asyncio as aioredis

from tests.support.api import ISSUER, PASSWORD, ApiServer, Client, ServerFactory
from veza_core.auth import AUDIENCE_API, TokenVerifier
from veza_core.keys import KeySet
from veza_local.services import LocalService, RedisService


async def test_register_login_and_profile(client: Client, api_server: ApiServer) -> None:
    made = await client.post("/api/v1/auth/register",
                             {"email": "Ada@Example.ORG", "password": PASSWORD, "display_name": "Ada"})
    assert made.status == 202 and made.body == {"status": "check_email"}

    login = await client.post("/api/v1/auth/login", {"email": "ADA@example.org", "password": PASSWORD})
    assert login.status == 200 and login.body["token_type"] == "Bearer"
    # Tokens must not be kept by any cache between the client and the API.
    assert login.headers["Cache-Control"] == "no-store", login.headers
    # The access token is what the shared verifier expects: EdDSA, kid, issuer, audience veza-api.
    principal = TokenVerifier(KeySet(api_server.keys_dir), issuer=ISSUER, audience=AUDIENCE_API).verify(
        login.body["access_token"])
    assert principal.subject == login.body["user_id"] and principal.name == "Ada"

    me = client.as_user(login.body["access_token"])
    profile = await me.get("/api/v1/me")
    assert profile.status == 200 and profile.body["email"] == "ada@example.org" and profile.body["resources"] == {}
    assert profile.body["roles"] == [] and profile.body["email_verified"] is False
    renamed = await me.patch("/api/v1/me", {"display_name": "Ada L."})
    assert renamed.status == 200 and renamed.body["display_name"] == "Ada L."

    conn = await asyncpg.connect(api_server.database_url)
    try:
        stored = await conn.fetchval("SELECT password_hash FROM users WHERE email = 'ada@example.org'")
    finally:
        await conn.close()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


async def test_wrong_password_and_unknown_account_look_the_same(client: Client) -> None:
    user = await client.register_and_login()
    wrong = await client.post("/api/v1/auth/login", {"email": user["email"], "password": "not the password"})
    unknown = await client.post("/api/v1/auth/login", {"email": "nobody@veza.test", "password": PASSWORD})
    assert wrong.status == unknown.status == 401
    expected = {"error": {"code": "invalid_credentials", "message": "wrong email or password"}}
    assert wrong.body == unknown.body == expected


async def test_weak_or_malformed_registrations_are_refused(client: Client) -> None:
    short = await client.post("/api/v1/auth/register", {"email": "a@b.test", "password": "short", "display_name": "A"})
    assert short.status == 422 and short.body["error"]["code"] == "invalid_body"
    bad_email = await client.post("/api/v1/auth/register",
                                  {"email": "not-an-email", "password": PASSWORD, "display_name": "A"})
    assert bad_email.status == 422


async def test_refresh_rotates_and_reuse_revokes_the_family(client: Client) -> None:
    tokens = await client.register_and_login()
    first = tokens["refresh_token"]
    second = await client.post("/api/v1/auth/refresh", {"refresh_token": first})
    assert second.status == 200 and second.body["refresh_token"] != first
    third = await client.post("/api/v1/auth/refresh", {"refresh_token": second.body["refresh_token"]})
    assert third.status == 200

    # An attacker replays the first token: the whole session dies, the legitimate chain included.
    replay = await client.post("/api/v1/auth/refresh", {"refresh_token": first})
    assert replay.status == 401 and replay.body["error"]["code"] == "refresh_token_reused"
    latest = await client.post("/api/v1/auth/refresh", {"refresh_token": third.body["refresh_token"]})
    assert latest.status == 401 and latest.body["error"]["code"] == "invalid_refresh_token"
    revoked_access = await client.as_user(third.body["access_token"]).get("/api/v1/me")
    assert revoked_access.status == 401 and revoked_access.body["error"]["code"] == "token_revoked"

    unknown = await client.post("/api/v1/auth/refresh", {"refresh_token": "x" * 43})
    assert unknown.status == 401


async def test_logout_ends_access_and_refresh(client: Client) -> None:
    tokens = await client.register_and_login()
    me = client.as_user(tokens["access_token"])
    assert (await me.get("/api/v1/me")).status == 200
    assert (await me.post("/api/v1/auth/logout")).status == 204
    after = await me.get("/api/v1/me")
    assert after.status == 401 and after.body["error"]["code"] == "token_revoked"
    refresh = await client.post("/api/v1/auth/refresh", {"refresh_token": tokens["refresh_token"]})
    assert refresh.status == 401
    # Other sessions of the same user are untouched.
    other = await client.post("/api/v1/auth/login", {"email": tokens["email"], "password": PASSWORD})
    assert (await client.as_user(other.body["access_token"]).get("/api/v1/me")).status == 200


async def test_a_revocation_survives_redis_forgetting_it(make_api: ServerFactory,
                                                          service_factory: Callable[[type[LocalService]], LocalService]
                                                          ) -> None:
    """Redis only caches revocations: flushed (an eviction, a restart), PostgreSQL still refuses the token."""
    cache = service_factory(RedisService)
    assert isinstance(cache, RedisService)
    server = await make_api(redis_url=cache.url)
    tokens = await server.client.register_and_login()
    me = server.client.as_user(tokens["access_token"])
    assert (await me.get("/api/v1/me")).status == 200  # an "active" answer is cached now
    assert (await me.post("/api/v1/auth/logout")).status == 204
    flusher = aioredis.from_url(cache.url)
    try:
        await flusher.flushall()
    finally:
        await flusher.aclose()
    after = await me.get("/api/v1/me")
    assert after.status == 401 and after.body["error"]["code"] == "token_revoked"


async def test_audit_log_records_security_events(client: Client, admin: Client) -> None:
    tokens = await client.register_and_login()
    await client.post("/api/v1/auth/login", {"email": tokens["email"], "password": "wrong password!"})
    await client.post("/api/v1/auth/refresh", {"refresh_token": tokens["refresh_token"]})
    await client.post("/api/v1/auth/refresh", {"refresh_token": tokens["refresh_token"]})
    uid = tokens["user_id"]
    events = (await admin.get("/api/v1/admin/audit", actor=uid, limit="50")).body["entries"]
    names = [e["event"] for e in events]
    for expected in ("user.registered", "login.success", "login.failure", "token.refresh", "token.reuse"):
        assert expected in names, names
    failure = next(e for e in events if e["event"] == "login.failure")
    assert failure["ip"] == client.ip and failure["details"]["reason"] == "bad credentials"
    forbidden = await client.as_user(tokens["access_token"]).get("/api/v1/admin/audit")
    assert forbidden.status in (401, 403)
