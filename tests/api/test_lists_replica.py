"""The API's lists through a real streaming replica: served by it when caught up, read-your-writes on the API
replica that wrote while replication is paused, and the lag bound for writes made through another API replica."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from tests.support.api import ADMIN_EMAIL, Client, ServerFactory
from tests.support.db import StandbyService, standby_of
from tests.support.waiting import wait_for
from veza_local.services import PostgresService


def reads(target: str, reason: str) -> float:
    return REGISTRY.get_sample_value("veza_db_reads_total", {"target": target, "reason": reason}) or 0.0


@pytest.fixture(scope="module")
def standby(postgres: PostgresService, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandbyService]:
    with standby_of(postgres, tmp_path_factory.mktemp("api-replica")) as server:
        yield server


async def admin_of(make_api: ServerFactory, read_url: str, max_lag: float = 5.0) -> Client:
    server = await make_api(database_read_url=read_url, database_read_max_lag_seconds=max_lag)
    tokens = await server.client.register_and_login(ADMIN_EMAIL, name="Root")
    return server.client.as_user(tokens["access_token"])


async def room_names(client: Client) -> list[str]:
    reply = await client.get("/api/v1/rooms")
    assert reply.status == 200
    return [r["name"] for r in reply.body["rooms"]]


async def declare(client: Client) -> str:
    name = "r" + uuid.uuid4().hex[:10]
    assert (await client.put(f"/api/v1/admin/rooms/{name}", {"title": name})).status == 201
    return name


async def test_lists_read_the_replica_and_the_writers_own_writes(make_api: ServerFactory, api_database: str,
                                                                  standby: StandbyService) -> None:
    admin = await admin_of(make_api, await standby.replica_of(api_database))
    first = await declare(admin)
    assert first in await room_names(admin)  # at once, whichever server answered

    async def from_replica() -> bool:
        before = reads("replica", "fresh")
        assert first in await room_names(admin)
        return reads("replica", "fresh") > before

    await wait_for(from_replica, timeout=10, interval=0.1, message="a list served by the replica")
    for path in ("/api/v1/channels", "/api/v1/admin/users", "/api/v1/admin/audit"):
        before = reads("replica", "fresh")
        assert (await admin.get(path)).status == 200
        assert reads("replica", "fresh") > before, path

    await standby.pause_replay()
    try:
        behind = reads("primary", "behind")
        second = await declare(admin)
        assert {first, second} <= set(await room_names(admin))  # read-your-writes although replay is paused
        assert reads("primary", "behind") > behind
    finally:
        await standby.resume_replay()


async def test_another_api_replica_sees_a_write_within_the_lag_bound(make_api: ServerFactory, api_database: str,
                                                                     standby: StandbyService) -> None:
    replica = await standby.replica_of(api_database)
    writer, other = await admin_of(make_api, replica), await admin_of(make_api, replica, max_lag=1.0)
    await room_names(other)  # its own sign-in's writes are behind it
    await standby.caught_up()
    await standby.pause_replay()
    try:
        name = await declare(writer)
        # The other process was not told: past the bound at worst, its lists leave the lagging replica.
        assert name not in await room_names(other)  # within the bound: the replica, which lacks it
        lagging = reads("primary", "lagging")
        await wait_for(lambda: _has(other, name), timeout=5, interval=0.2, message="the write seen elsewhere")
        assert reads("primary", "lagging") > lagging
    finally:
        await standby.resume_replay()


async def _has(client: Client, name: str) -> bool:
    return name in await room_names(client)
