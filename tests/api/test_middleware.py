"""Rate limits (429 + Retry-After), CORS, body limits (413), malformed and hostile input."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import quote

from tests.support.api import PASSWORD, ApiServer, Client, ServerFactory


async def test_brute_force_logins_are_rate_limited(make_api: ServerFactory) -> None:
    server = await make_api(rate_login_per_minute=6, rate_login_burst=3)
    victim = await server.client.register_and_login()
    attacker = Client(server.client.base, server.client.session)
    replies = [await attacker.post("/api/v1/auth/login", {"email": victim["email"], "password": f"guess {i}"})
               for i in range(5)]
    # The login made by register_and_login used one token of the account's bucket.
    assert [r.status for r in replies] == [401, 401, 429, 429, 429]
    limited = replies[-1]
    assert limited.body["error"]["code"] == "rate_limited" and 1 <= int(limited.headers["Retry-After"]) <= 11
    # Another address is limited too: the account's own bucket is empty (a botnet gains nothing).
    elsewhere = Client(server.client.base, server.client.session)
    assert (await elsewhere.post("/api/v1/auth/login", {"email": victim["email"], "password": PASSWORD})).status == 429
    # ... while other accounts from a fresh address still log in.
    other = await Client(server.client.base, server.client.session).register_and_login()
    assert other["access_token"]


async def test_failing_logins_for_someone_else_cannot_lock_them_out(make_api: ServerFactory) -> None:
    """An attacker fails logins for a victim's address until limited: the victim still logs in from where they
    log in (an address with a recent successful login), and the attacker stays limited."""
    server = await make_api(rate_login_per_minute=1, rate_login_burst=5)
    victim = await server.client.register_and_login()  # from the victim's usual address
    attacker = Client(server.client.base, server.client.session)
    statuses = [(await attacker.post("/api/v1/auth/login", {"email": victim["email"], "password": f"guess {i}"}
                                     )).status for i in range(8)]
    assert statuses[-1] == 429 and 401 in statuses, statuses

    for _ in range(2):
        again = await server.client.post("/api/v1/auth/login", {"email": victim["email"], "password": PASSWORD})
        assert again.status == 200, again.body
    still = await attacker.post("/api/v1/auth/login", {"email": victim["email"], "password": PASSWORD})
    assert still.status == 429


async def test_per_ip_and_per_user_request_limits(make_api: ServerFactory) -> None:
    server = await make_api(rate_ip_per_second=1, rate_ip_burst=5, rate_user_per_second=1, rate_user_burst=3)
    anonymous = Client(server.client.base, server.client.session)
    statuses = [(await anonymous.get("/api/v1/rooms")).status for _ in range(7)]
    assert statuses[:5] == [200] * 5 and statuses[5:] == [429, 429]

    tokens = await Client(server.client.base, server.client.session).register_and_login()
    user = Client(server.client.base, server.client.session, tokens["access_token"])
    hits = [await user.get("/api/v1/me") for _ in range(4)]
    assert [h.status for h in hits] == [200, 200, 200, 429]
    assert hits[-1].headers["Retry-After"] == "1"
    # The per-user bucket follows the account across addresses.
    moved = Client(server.client.base, server.client.session, tokens["access_token"])
    assert (await moved.get("/api/v1/me")).status == 429
    # Guessing tokens is limited per address like anything else.
    guesser = Client(server.client.base, server.client.session, "not-a-token")
    guesses = [(await guesser.get("/api/v1/me")).status for _ in range(6)]
    assert guesses[:5] == [401] * 5 and guesses[5] == 429


async def test_cors_allows_configured_origins_only(client: Client, api_server: ApiServer) -> None:
    allowed = {"Origin": "https://app.veza.test", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization, content-type"}
    preflight = await client.call("OPTIONS", "/api/v1/auth/login", headers=allowed, check=False)
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.veza.test"
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    denied = await client.call("OPTIONS", "/api/v1/auth/login", check=False,
                               headers={**allowed, "Origin": "https://evil.example"})
    assert denied.status == 403 and "Access-Control-Allow-Origin" not in denied.headers

    simple = await client.get("/api/v1/rooms", headers={"Origin": "https://app.veza.test"})
    assert simple.headers["Access-Control-Allow-Origin"] == "https://app.veza.test"
    # Error answers carry the header too, so the browser app can read the error.
    error = await client.get("/api/v1/me", headers={"Origin": "https://app.veza.test"})
    assert error.status == 401 and error.headers["Access-Control-Allow-Origin"] == "https://app.veza.test"
    foreign = await client.get("/api/v1/rooms", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in foreign.headers


async def test_oversized_and_malformed_bodies_get_4xx(client: Client, api_server: ApiServer) -> None:
    limit = api_server.settings.max_body_bytes
    big = await client.call("POST", "/api/v1/auth/login", data=b"{" + b" " * limit + b"}",
                            headers={"Content-Type": "application/json"})
    assert big.status == 413 and big.body["error"]["code"] == "body_too_large"

    async def chunks() -> object:
        for _ in range(limit // 1024 + 2):
            yield b" " * 1024

    # No Content-Length (chunked): stopped while reading.
    async with client.session.post(client.base + "/api/v1/auth/login", data=chunks(),
                                   headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 413 and (await resp.json())["error"]["code"] == "body_too_large"

    for body in (b"{not json", b"[1, 2", b"\xff\xfe", b'"just a string"', b"[]", b"null", b'{"email": 5}'):
        reply = await client.call("POST", "/api/v1/auth/login", data=body,
                                  headers={"Content-Type": "application/json"})
        assert reply.status in (400, 422), (body, reply.status)
        assert set(reply.body["error"]) >= {"code", "message"}
    wrong_method = await client.call("DELETE", "/api/v1/auth/login")
    assert wrong_method.status == 405 and wrong_method.body["error"]["code"] == "method_not_allowed"
    missing = await client.get("/api/v1/nothing-here")
    assert missing.status == 404 and missing.body["error"]["code"] == "not_found"


INJECTIONS = ["' OR '1'='1", "'; DROP TABLE users; --", "../../etc/passwd", "%00", "<script>alert(1)</script>",
              "${jndi:ldap://x}", "\\x00", "a" * 3000, "😀", "{{7*7}}", "1; SELECT pg_sleep(5)"]


async def test_injection_strings_change_nothing(client: Client, admin: Client, api_server: ApiServer) -> None:
    user = await client.register_and_login()
    me = client.as_user(user["access_token"])
    rooms_before = (await admin.get("/api/v1/rooms")).body
    for evil in INJECTIONS:
        quoted = quote(evil, safe="")
        for path in (f"/api/v1/rooms/{quoted}", f"/api/v1/channels/{quoted}", f"/api/v1/admin/users/{quoted}"):
            reply = await admin.call("GET" if "users" not in path else "PATCH", path,
                                     json_body={"disabled": True} if "users" in path else None)
            assert reply.status in (400, 404, 405, 414, 422), (path, reply.status)
        login = await client.post("/api/v1/auth/login", {"email": evil, "password": evil})
        assert login.status in (401, 422)
        login = await client.post("/api/v1/auth/login", {"email": user["email"], "password": evil})
        assert login.status == (401 if len(evil) <= 1024 else 422)
        listed = await admin.get("/api/v1/admin/users", email=evil)
        assert listed.status == 200 and listed.body["users"] == []
        audit = await admin.get("/api/v1/admin/audit", event=evil, subject=evil)
        assert audit.status == 200 and audit.body["entries"] == []
        assert (await admin.get("/api/v1/admin/audit", limit=evil)).status == 400
        renamed = await me.patch("/api/v1/me", {"display_name": evil[:100]})
        assert renamed.status == 200 and renamed.body["display_name"] == evil[:100]
        moderation = await admin.post("/api/v1/rooms/general/moderation", {"action": evil, "user_id": evil})
        assert moderation.status in (404, 422)
    # Still the same users, rooms and password.
    assert (await admin.get("/api/v1/rooms")).body == rooms_before
    assert (await client.post("/api/v1/auth/login", {"email": user["email"], "password": PASSWORD})).status == 200
    assert (await admin.get("/api/v1/admin/users", email=user["email"])).body["users"][0]["id"] == user["user_id"]


async def test_concurrent_refreshes_of_one_token_let_exactly_one_through(client: Client) -> None:
    tokens = await client.register_and_login()
    replies = await asyncio.gather(*[client.post("/api/v1/auth/refresh", {"refresh_token": tokens["refresh_token"]})
                                     for _ in range(5)])
    assert sorted(r.status for r in replies) == [200, 401, 401, 401, 401]
    # The winner's token died with the family: a race on one refresh token is reuse.
    winner = next(r for r in replies if r.status == 200)
    assert (await client.as_user(winner.body["access_token"]).get("/api/v1/me")).status == 401
    assert uuid.UUID(winner.body["user_id"])


async def test_metrics_and_readiness_are_not_published_through_the_front_door(api_server: ApiServer) -> None:
    """The platform's `/` route sends everything to the API: through it (the proxy adds
    X-Forwarded-For) /metrics and /readyz answer 404; the kubelet and Prometheus, which reach the
    pod directly, still get them."""
    base, session = api_server.client.base, api_server.client.session
    for path in ("/metrics", "/readyz"):
        async with session.get(base + path, headers={"X-Forwarded-For": "198.51.100.4"}) as resp:
            assert resp.status == 404, path
        async with session.get(base + path) as resp:
            assert resp.status == 200, path
    async with session.get(base + "/healthz", headers={"X-Forwarded-For": "198.51.100.4"}) as resp:
        assert resp.status == 200
