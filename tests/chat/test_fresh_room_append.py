"""A new database's first room appends as fast at 20,000 events as at 500, before the table was ever analyzed.

The duplicate check once had a plan of its own, made at a connection's first call and kept; made on a never-analyzed
chat_events it sometimes probed by room alone and filtered author and client id, so every commit read the whole room
(migrations 0103, then 0104: the insert skips a resent client id on the unique key, with no plan to choose).
Autovacuum is turned off for the table here so that no ANALYZE comes to the rescue mid-test."""

from __future__ import annotations

import statistics
import time

import asyncpg

from tests.support.db import fresh_database
from veza_chat.store import APPEND
from veza_local.services import PostgresService

BATCH = 100


async def test_a_new_rooms_commits_do_not_slow_down_before_the_first_analyze(postgres: PostgresService) -> None:
    conn = await asyncpg.connect(await fresh_database(postgres, "freshroom"))
    try:
        await conn.execute("ALTER TABLE chat_events SET (autovacuum_enabled = off)")

        async def append(batch: int) -> float:
            ids = range(batch * BATCH, (batch + 1) * BATCH)
            began = time.perf_counter()
            rows = await conn.fetch(APPEND, "first", ["message"] * BATCH, [f"u{i % 8}" for i in ids],
                                    ["U"] * BATCH, [f"c{i}" for i in ids], [f"text {i}" for i in ids],
                                    [None] * BATCH, [None] * BATCH, [None] * BATCH)
            assert [r["r_seq"] for r in rows] == [i + 1 for i in ids] and not any(r["r_duplicate"] for r in rows)
            return time.perf_counter() - began

        took = [await append(batch) for batch in range(200)]
        early, late = statistics.median(took[5:10]), statistics.median(took[-5:])
        # Probing by room alone made the last commits ~15 times slower than the early ones.
        assert late < 3 * early + 0.003, f"{BATCH} messages: {early * 1000:.1f} ms at 500 events, " \
                                         f"{late * 1000:.1f} ms at 20,000"
        assert await conn.fetchval("SELECT reltuples FROM pg_class WHERE relname = 'chat_events'") < 0  # never analyzed
        again = await conn.fetch(APPEND, "first", ["message"], ["u3"], ["U"], ["c3"], ["text 3"], [None], [None],
                                 [None])
        assert again[0]["r_duplicate"] and again[0]["r_seq"] == 4
    finally:
        await conn.close()
