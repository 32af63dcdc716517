"""What every API request goes through, kept cheap without losing a feature: request ids, metrics, access-log
redaction, the one-middleware pipeline (CORS, no-store, limits) and the one-query room list."""

from __future__ import annotations

import re

import pytest
from prometheus_client import REGISTRY

from tests.support.api import PASSWORD, ApiServer, Client
from veza_core.logs import _redact, redact

JWT = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


@pytest.mark.parametrize("text", [
    '{"msg": "request", "path": "/api/v1/rooms", "status": 200}',
    "GET /a?x=1&token=abc&b=2", "GET /a?ACCESS_TOKEN=abc", "Password=hunter2; Secret=s", "passwd=x ticket=y",
    "token= left alone", "tokens=1", f"Authorization: Bearer {JWT}", "BEARER abc.def", f"jwt {JWT} end",
    "eyJ but no jwt", f'{{"url": "http://h/p?access_token={JWT}&b=2"}}',
    # Case-insensitive matching folds a few non-ASCII letters too (the long s, the Kelvin sign).
    "\u017fecret=x", "\u212aey token=x", "café token=x",
])
def test_redaction_skips_only_lines_the_patterns_cannot_match(text: str) -> None:
    assert redact(text) == _redact(text)


def _requests_counted(route: str, status: str) -> float:
    value = REGISTRY.get_sample_value("veza_http_requests_total",
                                      {"component": "api", "route": route, "method": "GET", "status": status})
    return value or 0.0


async def test_request_ids_and_metrics_on_every_answer(client: Client) -> None:
    before = _requests_counted("/api/v1/rooms", "200"), _requests_counted("/api/v1/rooms/{name}", "404")
    made = await client.get("/api/v1/rooms")
    assert re.fullmatch(r"[0-9a-f]{16}", made.headers["X-Request-Id"])
    assert made.headers["X-Request-Id"] != (await client.get("/api/v1/rooms")).headers["X-Request-Id"]
    given = await client.get("/api/v1/rooms/no-such-room", headers={"X-Request-Id": "from-the-client"})
    assert given.status == 404 and given.headers["X-Request-Id"] == "from-the-client"
    # Counted per route template, method and status (each label set's child is kept, not looked up again).
    assert _requests_counted("/api/v1/rooms", "200") == before[0] + 2
    assert _requests_counted("/api/v1/rooms/{name}", "404") == before[1] + 1


async def test_one_middleware_keeps_cors_no_store_and_limits(client: Client, api_server: ApiServer) -> None:
    origin = {"Origin": "https://app.veza.test"}
    listed = await client.get("/api/v1/rooms", headers=origin)
    assert listed.headers["Access-Control-Allow-Origin"] == "https://app.veza.test"
    assert "Cache-Control" not in listed.headers  # no-store is for the answers that carry tokens
    refused = await client.as_user("not-a-token").get("/api/v1/me", headers=origin)
    assert refused.status == 401 and refused.headers["Access-Control-Allow-Origin"] == "https://app.veza.test"
    assert refused.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    account = await client.register_and_login()
    login = await client.post("/api/v1/auth/login", {"email": account["email"], "password": PASSWORD},
                              headers=origin)
    assert login.status == 200 and login.headers["Cache-Control"] == "no-store"
    assert login.headers["Access-Control-Allow-Origin"] == "https://app.veza.test"
    too_big = await client.call("POST", "/api/v1/auth/login", check=False, headers=origin,
                                data=b"x" * (api_server.settings.max_body_bytes + 1))
    assert too_big.status == 413 and too_big.body["error"]["code"] == "body_too_large"
    assert too_big.headers["Access-Control-Allow-Origin"] == "https://app.veza.test"


async def test_the_room_list_answers_the_same_shape(client: Client, admin: Client) -> None:
    room = f"shape-{re.sub('[^a-z0-9]', '', client.ip)}"
    assert (await admin.put(f"/api/v1/admin/rooms/{room}", {"title": "Shape"})).status in (200, 201)
    rooms = {r["name"]: r for r in (await client.get("/api/v1/rooms")).body["rooms"]}
    assert list(rooms[room]) == ["name", "title", "visibility", "updated_at", "member_count", "channel"]
    assert rooms[room]["title"] == "Shape" and rooms[room]["channel"] is None
    names = [r["name"] for r in (await admin.get("/api/v1/rooms")).body["rooms"]]
    assert names == sorted(names) and room in names
