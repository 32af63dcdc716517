"""The read router against a real streaming replica of the session's PostgreSQL: which server serves a read,
with replication live, paused, lagging past the bound, and with the replica killed and brought back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from prometheus_client import REGISTRY

from tests.support.db import StandbyService, fresh_database, standby_of
from tests.support.waiting import wait_for
from veza_core.db import create_pool
from veza_core.replica import ReadRouter, read_url
from veza_local.services import PostgresService

# Which server answered: the replica is in recovery, the primary is not.
WHERE = "SELECT CASE WHEN pg_is_in_recovery() THEN 'replica' ELSE 'primary' END"


def reads(target: str, reason: str) -> float:
    return REGISTRY.get_sample_value("veza_db_reads_total", {"target": target, "reason": reason}) or 0.0


def circuit_open() -> float | None:
    return REGISTRY.get_sample_value("veza_circuit_open", {"name": "db-replica"})


@pytest.fixture(scope="module")
def standby(postgres: PostgresService, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandbyService]:
    with standby_of(postgres, tmp_path_factory.mktemp("replica")) as server:
        yield server


@pytest.fixture
async def database(postgres: PostgresService, standby: StandbyService) -> AsyncIterator[tuple[str, str]]:
    url = await fresh_database(postgres, "replica", migrated=False)
    conn = await asyncpg.connect(url)
    await conn.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL)")
    await conn.close()
    yield url, await standby.replica_of(url)
    await standby.resume_replay()  # whatever the test left paused


@pytest.fixture
async def router(database: tuple[str, str]) -> AsyncIterator[ReadRouter]:
    primary = await create_pool(database[0])
    made = ReadRouter(primary, database[1], max_lag=1.0, interval=0.1)
    await made.start()
    yield made
    await made.close()
    await primary.close()


async def write(router: ReadRouter, body: str) -> None:
    await router.primary.execute("INSERT INTO notes (body) VALUES ($1)", body)
    router.wrote()


async def served_by_replica(router: ReadRouter) -> bool:
    return await router.fetchval(WHERE) == "replica"


async def bodies(router: ReadRouter) -> list[str]:
    return [r["body"] for r in await router.fetch("SELECT body FROM notes ORDER BY id")]


def test_read_endpoint_from_url_or_host() -> None:
    primary = "postgresql://veza:s3cret@pg-rw.db.svc:5432/veza?sslmode=require"
    assert read_url(primary, None, None) is None
    assert read_url(primary, "postgresql://reader@replica/veza", "ignored") == "postgresql://reader@replica/veza"
    assert read_url(primary, None, "pg-ro.db.svc") == "postgresql://veza:s3cret@pg-ro.db.svc:5432/veza?sslmode=require"
    assert read_url(primary, None, "pg-ro:6432") == "postgresql://veza:s3cret@pg-ro:6432/veza?sslmode=require"
    assert read_url("postgresql://h/db", "", "other") == "postgresql://other/db"


async def test_without_a_replica_everything_reads_the_primary(database: tuple[str, str]) -> None:
    primary = await create_pool(database[0])
    router = ReadRouter(primary, None)
    await router.start()
    before = reads("primary", "down"), reads("replica", "fresh")
    assert await router.fetchval(WHERE) == "primary"
    assert router.replica is None
    assert (reads("primary", "down"), reads("replica", "fresh")) == before  # no routing, nothing counted
    await router.close()
    await primary.close()


async def test_caught_up_replica_serves_reads_and_sees_the_writes(router: ReadRouter) -> None:
    await write(router, "one")
    # Until the replica replays the write, reading it is the primary's job; then the replica's.
    await wait_for(lambda: served_by_replica(router), timeout=5, message="the replica caught up")
    served = reads("replica", "fresh")
    assert await bodies(router) == ["one"]
    assert await router.fetchval(WHERE) == "replica"
    assert reads("replica", "fresh") == served + 2


async def test_own_write_is_read_from_the_primary_while_replay_is_paused(router: ReadRouter,
                                                                         standby: StandbyService) -> None:
    await write(router, "before")
    await wait_for(lambda: served_by_replica(router), timeout=5, message="the replica caught up")
    await standby.pause_replay()
    await write(router, "mine")
    behind = reads("primary", "behind")
    assert await bodies(router) == ["before", "mine"]  # read-your-writes, replica or not
    assert await router.fetchval(WHERE) == "primary"
    assert reads("primary", "behind") == behind + 2
    await standby.resume_replay()
    await wait_for(lambda: served_by_replica(router), timeout=5, message="reads back on the replica")
    assert await bodies(router) == ["before", "mine"]


async def test_lag_past_the_bound_sends_every_read_to_the_primary(router: ReadRouter,
                                                                  standby: StandbyService) -> None:
    await standby.pause_replay()
    # Written by someone else (no `wrote()` here): only the lag bound keeps reads off the replica.
    await router.primary.execute("INSERT INTO notes (body) VALUES ('elsewhere')")
    assert await router.fetchval(WHERE) == "replica"  # within the bound (1 s): a lagging read is allowed
    await wait_for(lambda: router.lag > router.max_lag, timeout=5, message="lag past the bound")
    assert (REGISTRY.get_sample_value("veza_db_replica_lag_seconds") or 0) > router.max_lag
    lagging = reads("primary", "lagging")
    assert await bodies(router) == ["elsewhere"]
    assert reads("primary", "lagging") == lagging + 1
    await standby.resume_replay()
    await wait_for(lambda: router.lag == 0, timeout=5, message="the replica caught up")
    assert await router.fetchval(WHERE) == "replica"


async def test_an_idle_primary_is_not_lag(router: ReadRouter) -> None:
    await write(router, "last")
    await wait_for(lambda: router.lag == 0, timeout=5)
    await asyncio.sleep(3 * router.max_lag)  # nothing written: the replay timestamp ages, the replica does not lag
    assert router.lag < router.max_lag
    assert await router.fetchval(WHERE) == "replica"


async def test_killed_replica_opens_the_circuit_and_recovers_by_itself(router: ReadRouter,
                                                                       standby: StandbyService) -> None:
    await write(router, "kept")
    await wait_for(lambda: served_by_replica(router), timeout=5, message="the replica caught up")
    standby.kill()
    try:
        fell_back = reads("primary", "error") + reads("primary", "down")
        assert await bodies(router) == ["kept"]  # served at once, by the primary
        assert circuit_open() == 1
        assert await router.fetchval(WHERE) == "primary"
        assert reads("primary", "error") + reads("primary", "down") == fell_back + 2
        await wait_for(lambda: not router.up, timeout=5, message="the monitor saw the replica down")
        assert REGISTRY.get_sample_value("veza_dependency_up",
                                         {"component": "worker", "dependency": "postgres-replica"}) == 0
    finally:
        standby.start()
    await wait_for(lambda: served_by_replica(router), timeout=20, interval=0.2, message="reads back on the replica")
    assert circuit_open() == 0
    assert await bodies(router) == ["kept"]


async def test_replica_down_at_start_is_no_error(postgres: PostgresService) -> None:
    primary = await create_pool(postgres.url)
    router = ReadRouter(primary, "postgresql://postgres@127.0.0.1:1/veza", max_lag=1.0, interval=0.1)
    await router.start()
    assert await router.fetchval(WHERE) == "primary"
    await router.close()
    await primary.close()
