"""chat_append's duplicate check against real PostgreSQL: it probes the unique index (room, author, client id)
whatever the table's statistics say, so a room that grew since the last ANALYZE costs no more to append to than a
small one (planned per call, the probe once scanned the whole room for every message; migration 0102)."""

from __future__ import annotations

import statistics
import time

import asyncpg

from tests.support.db import fresh_database
from veza_chat.store import APPEND
from veza_local.services import PostgresService


async def test_a_room_the_statistics_never_saw_appends_as_fast_as_a_small_one(postgres: PostgresService) -> None:
    conn = await asyncpg.connect(await fresh_database(postgres, "chatdups"))
    try:
        async def append(room: str, start: int, n: int) -> float:
            ids = range(start, start + n)
            began = time.perf_counter()
            rows = await conn.fetch(APPEND, room, ["message"] * n, [f"u{i % 50}" for i in ids], ["U"] * n,
                                    [f"c{i}" for i in ids], [f"text {i}" for i in ids], [None] * n, [None] * n,
                                    [None] * n)
            assert len(rows) == n and not any(r["r_duplicate"] for r in rows)
            return time.perf_counter() - began

        for batch in range(10):  # the statistics know this room only
            await append("seen", batch * 1000, 1000)
        await conn.execute("ANALYZE chat_events")
        for batch in range(30):  # 30,000 events since the last ANALYZE
            await append("grown", batch * 1000, 1000)
        grown = statistics.median([await append("grown", 100_000 + k * 90, 90) for k in range(5)])
        small = statistics.median([await append(f"small-{k}", 0, 90) for k in range(5)])
        # A scan of the room per message made it ~36 times slower; the same plan makes it about as fast.
        assert grown < 4 * small + 0.005, f"90 messages: {grown * 1000:.1f} ms into the grown room, " \
                                          f"{small * 1000:.1f} ms into a small one"
        # And a resend is still recognized, with its first seq.
        again = await conn.fetch(APPEND, "grown", ["message"], ["u0"], ["U"], ["c0"], ["text 0"], [None], [None],
                                 [None])
        assert again[0]["r_duplicate"] and again[0]["r_seq"] == 1
    finally:
        await conn.close()
