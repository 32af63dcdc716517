"""How the shared pool gives connections back (veza_core.db.create_pool), against real PostgreSQL.

asyncpg's default reset sent a statement of its own at every release, a round trip as costly as the query before
it; the pool now sends nothing, and still ends a transaction a caller left open."""

from __future__ import annotations

import asyncpg

from tests.support.db import fresh_database
from veza_core.db import create_pool
from veza_local.services import PostgresService


async def test_a_released_connection_costs_no_statement_and_is_never_left_in_a_transaction(
        postgres: PostgresService) -> None:
    url = await fresh_database(postgres, "poolreset")
    pool = await create_pool(url, min_size=1, max_size=1)
    watcher = await asyncpg.connect(url)
    try:
        await pool.execute("CREATE TABLE notes (body text)")
        backend = await pool.fetchval("SELECT pg_backend_pid()")
        # The backend's last statement, as PostgreSQL itself saw it: the query, not a reset after it.
        last = await watcher.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", backend)
        assert last == "SELECT pg_backend_pid()"

        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO notes VALUES ('never committed')")
        # max_size=1: the same connection again, out of the transaction its last user left open.
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == backend
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM notes") == 0
    finally:
        await watcher.close()
        await pool.close()
