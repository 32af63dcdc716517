"""The admin analytics routes read the analytics store (real PostgreSQL, filled with SQL): each figure, the window
(from/to, UTC, half-open), the filters, 400 for bad parameters, 403 for users, 401 for anonymous callers. Every
answer is checked against the OpenAPI document by the client (tests/support/api.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from tests.support.analytics import apply_schema, at, seed
from tests.support.api import ADMIN_EMAIL, ApiServer, Client, ServerFactory
from tests.support.db import fresh_database
from veza_local.services import PostgresService

DAY = date(2021, 3, 14)
NEXT = DAY + timedelta(days=1)
BASE = "/api/v1/admin/analytics"
ROUTES = ("messages", "active-users", "listening", "peaks", "top-tracks")


@dataclass
class Store:
    """An API server whose analytics store is a database of its own, and its admin."""

    server: ApiServer
    admin: Client
    url: str


@pytest.fixture(scope="module")
async def store(postgres: PostgresService, make_api: ServerFactory) -> Store:
    url = await fresh_database(postgres, "analytics", migrated=False)
    await apply_schema(url)
    await seed(url, DAY)
    server = await make_api(analytics_database_url=url)
    tokens = await server.client.register_and_login(ADMIN_EMAIL, name="Root")
    return Store(server, server.client.as_user(tokens["access_token"]), url)


def window(**params: str) -> dict[str, str]:
    return {"from": DAY.isoformat(), "to": NEXT.isoformat(), **params}


async def test_each_figure_of_the_two_days(store: Store) -> None:
    got = await store.admin.get(f"{BASE}/messages", **window())
    assert got.status == 200, got.body
    assert got.body["series"] == [
        {"room": "general", "hour": at(DAY, 9).isoformat(), "messages": 12},
        {"room": "general", "hour": at(DAY, 10).isoformat(), "messages": 30},
        {"room": "lobby", "hour": at(DAY, 10).isoformat(), "messages": 5},
        {"room": "general", "hour": at(NEXT, 0).isoformat(), "messages": 7}]
    assert at(DAY, 9).isoformat() == "2021-03-14T09:00:00+00:00"  # ISO-8601 in UTC

    got = await store.admin.get(f"{BASE}/active-users", **window())
    assert got.body == {"days": [{"day": "2021-03-14", "users": 3}, {"day": "2021-03-15", "users": 1}]}

    got = await store.admin.get(f"{BASE}/listening", **window())
    assert got.body["series"] == [
        {"channel": "radio", "rendition": "mp3-128", "hour": at(DAY, 10).isoformat(), "minutes": 30.0},
        {"channel": "radio", "rendition": "opus-64", "hour": at(DAY, 10).isoformat(), "minutes": 10.0},
        {"channel": "jazz", "rendition": "mp3-128", "hour": at(DAY, 11).isoformat(), "minutes": 60.0},
        {"channel": "radio", "rendition": "mp3-128", "hour": at(NEXT, 1).isoformat(), "minutes": 1.5}]

    got = await store.admin.get(f"{BASE}/peaks", **window())
    assert got.body["peaks"] == [
        {"kind": "connections", "scope": "general", "day": "2021-03-14", "peak": 17,
         "at": at(DAY, 10, 5).isoformat()},
        {"kind": "listeners", "scope": "radio", "day": "2021-03-14", "peak": 42, "at": at(DAY, 10, 15).isoformat()},
        {"kind": "listeners", "scope": "radio", "day": "2021-03-15", "peak": 3, "at": at(NEXT, 1, 30).isoformat()}]

    got = await store.admin.get(f"{BASE}/top-tracks", **window())
    assert got.body["tracks"] == [
        {"channel": "radio", "title": "Tone A", "track_id": "t-a", "plays": 9,
         "last_played": at(DAY, 10, 30).isoformat()},
        {"channel": "jazz", "title": "Blue", "track_id": "t-b", "plays": 6,
         "last_played": at(DAY, 11, 30).isoformat()},
        {"channel": "radio", "title": "Tone B", "track_id": None, "plays": 4, "last_played": at(DAY, 11).isoformat()}]


async def test_filters(store: Store) -> None:
    lobby = await store.admin.get(f"{BASE}/messages", **window(room="lobby"))
    assert [(s["room"], s["messages"]) for s in lobby.body["series"]] == [("lobby", 5)]
    jazz = await store.admin.get(f"{BASE}/listening", **window(channel="jazz"))
    assert [(s["channel"], s["minutes"]) for s in jazz.body["series"]] == [("jazz", 60.0)]
    connections = await store.admin.get(f"{BASE}/peaks", **window(kind="connections"))
    assert [(p["scope"], p["peak"]) for p in connections.body["peaks"]] == [("general", 17)]
    listeners = await store.admin.get(f"{BASE}/peaks", **window(kind="listeners"))
    assert [p["peak"] for p in listeners.body["peaks"]] == [42, 3]
    radio = await store.admin.get(f"{BASE}/top-tracks", **window(channel="radio", limit="1"))
    assert [t["title"] for t in radio.body["tracks"]] == ["Tone A"]
    nobody = await store.admin.get(f"{BASE}/messages", **window(room="nowhere"))
    assert nobody.status == 200 and nobody.body == {"series": []}


async def test_the_window_is_half_open_in_utc(store: Store) -> None:
    async def hours(**params: str) -> list[str]:
        got = await store.admin.get(f"{BASE}/messages", room="general", **params)
        assert got.status == 200, got.body
        return [s["hour"][:16] for s in got.body["series"]]

    # A date as `to` includes that day; a datetime as `to` is excluded.
    assert await hours(**{"from": "2021-03-14", "to": "2021-03-14"}) == ["2021-03-14T09:00", "2021-03-14T10:00"]
    assert await hours(**{"from": "2021-03-14", "to": "2021-03-14T10:00:00Z"}) == ["2021-03-14T09:00"]
    # An hour is in when it overlaps the window: from 10:59 still takes the 10:00 hour.
    assert await hours(**{"from": "2021-03-14T10:59:00", "to": "2021-03-15"}) == ["2021-03-14T10:00",
                                                                                  "2021-03-15T00:00"]
    # An offset is honoured: 01:30+02:00 is 23:30 UTC the day before, so the day's hours are all in.
    assert await hours(**{"from": "2021-03-14T01:30:00+02:00", "to": "2021-03-14T23:00:00+00:00"}) == [
        "2021-03-14T09:00", "2021-03-14T10:00"]
    # Days: the second day only.
    got = await store.admin.get(f"{BASE}/active-users", **{"from": "2021-03-15T12:00:00Z", "to": "2021-03-16"})
    assert got.body == {"days": [{"day": "2021-03-15", "users": 1}]}
    # Top tracks: those last played in the window.
    got = await store.admin.get(f"{BASE}/top-tracks", **{"from": "2021-03-14T11:00:00Z", "to": "2021-03-15"})
    assert [t["title"] for t in got.body["tracks"]] == ["Blue", "Tone B"]


async def test_the_default_window_is_the_last_seven_days(store: Store) -> None:
    for route in ROUTES:  # the seeded days are long past
        got = await store.admin.get(f"{BASE}/{route}")
        assert got.status == 200 and next(iter(got.body.values())) == [], (route, got.body)
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    inside, outside = now - timedelta(days=6, hours=22), now - timedelta(days=7, hours=2)
    conn = await asyncpg.connect(store.url)
    try:
        await conn.executemany("INSERT INTO analytics.room_messages_hourly (room, hour, messages) VALUES ($1, $2, $3)",
                               [("recent", inside, 2), ("recent", outside, 1)])
    finally:
        await conn.close()
    got = await store.admin.get(f"{BASE}/messages", room="recent")
    assert got.body == {"series": [{"room": "recent", "hour": inside.isoformat(), "messages": 2}]}
    # `to` alone: the 7 days before it.
    got = await store.admin.get(f"{BASE}/active-users", to="2021-03-20")
    assert [d["day"] for d in got.body["days"]] == ["2021-03-14", "2021-03-15"]
    got = await store.admin.get(f"{BASE}/active-users", to="2021-03-21")
    assert [d["day"] for d in got.body["days"]] == ["2021-03-15"]


@pytest.mark.parametrize(("route", "params", "says"), [
    ("messages", {"from": "yesterday"}, "from/to"),
    ("messages", {"to": "2021-02-30"}, "from/to"),
    ("listening", {"from": "2021-03-15", "to": "2021-03-14"}, "before"),
    ("active-users", {"from": "2020-01-01", "to": "2021-03-14"}, "366 days"),
    ("messages", {"room": "Not_A_Room"}, "room"),
    ("listening", {"channel": "../x"}, "channel"),
    ("peaks", {"kind": "viewers"}, "kind"),
    ("top-tracks", {"limit": "0"}, "limit"),
    ("top-tracks", {"limit": "101"}, "limit"),
    ("top-tracks", {"limit": "ten"}, "limit"),
])
async def test_bad_parameters_are_refused(store: Store, route: str, params: dict[str, str], says: str) -> None:
    got = await store.admin.get(f"{BASE}/{route}", **params)
    assert got.status == 400, got.body
    assert got.body["error"]["code"] == "invalid_query" and says in got.body["error"]["message"], got.body


async def test_admins_only(store: Store) -> None:
    anonymous = store.server.client.as_user(None)
    user = store.server.client.as_user((await store.server.client.register_and_login())["access_token"])
    for route in ROUTES:
        got = await anonymous.get(f"{BASE}/{route}")
        assert got.status == 401 and got.body["error"]["code"] == "unauthenticated", (route, got.body)
        got = await user.get(f"{BASE}/{route}", **window())
        assert got.status == 403 and got.body["error"]["code"] == "forbidden", (route, got.body)
    # Checked before the parameters: a user learns nothing from a 400.
    got = await user.get(f"{BASE}/peaks", kind="viewers")
    assert got.status == 403


async def test_by_default_the_store_is_the_platform_database(api_server: ApiServer, admin: Client) -> None:
    await apply_schema(api_server.database_url)
    await seed(api_server.database_url, DAY)
    got = await admin.get(f"{BASE}/peaks", **window(kind="connections"))
    assert got.status == 200 and [(p["scope"], p["peak"]) for p in got.body["peaks"]] == [("general", 17)]
