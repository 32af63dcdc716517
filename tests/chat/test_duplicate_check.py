"""chat_append's duplicate check against real PostgreSQL: a resent client id is skipped by the insert on the unique
key (room, author, client id) whatever the table's statistics say, so a room that grew since the last ANALYZE costs
no more to append to than a small one (a probe planned per call once scanned the whole room for every message;
migrations 0102-0104), and a batch with resends in it stays gapless."""

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


async def test_resent_ids_in_a_batch_leave_the_seqs_gapless_and_come_back_with_their_first_seq(
        postgres: PostgresService) -> None:
    """The insert skips a resent client id; the batch's other events close up behind it, in order."""
    conn = await asyncpg.connect(await fresh_database(postgres, "chatresend"))
    try:
        async def append(authors: list[str], cids: list[str]) -> list[tuple[int, int, bool]]:
            n = len(cids)
            rows = await conn.fetch(APPEND, "r", ["message"] * n, authors, ["U"] * n, cids,
                                    [f"{a}/{c}" for a, c in zip(authors, cids, strict=True)], [None] * n,
                                    [None] * n, [None] * n)
            return sorted((r["r_ord"], r["r_seq"], r["r_duplicate"]) for r in rows)

        assert await append(["a", "b", "a"], ["1", "1", "2"]) == [(1, 1, False), (2, 2, False), (3, 3, False)]
        # Resends of seq 1 and 3 between new events, and one client id twice in the same batch.
        got = await append(["a", "a", "c", "a", "c", "b"], ["1", "3", "1", "2", "1", "9"])
        assert got == [(1, 1, True), (2, 4, False), (3, 5, False), (4, 3, True), (5, 5, True), (6, 6, False)]
        stored = await conn.fetch("SELECT seq, body FROM chat_events WHERE room = 'r' ORDER BY seq")
        assert [(r["seq"], r["body"]) for r in stored] == [(1, "a/1"), (2, "b/1"), (3, "a/2"), (4, "a/3"),
                                                            (5, "c/1"), (6, "b/9")]
        assert await conn.fetchval("SELECT last_seq FROM chat_rooms WHERE room = 'r'") == 6
        # Only resends: nothing stored, the counter unchanged.
        assert await append(["b"], ["9"]) == [(1, 6, True)]
        assert await conn.fetchval("SELECT last_seq FROM chat_rooms WHERE room = 'r'") == 6
        assert await append(["d"], ["1"]) == [(1, 7, False)]
    finally:
        await conn.close()
