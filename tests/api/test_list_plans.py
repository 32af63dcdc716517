"""The list statements (veza_api.rooms) are planned once per connection and reused, against real PostgreSQL.

A statement taking the caller's id or NULL was planned anew at every execution: PostgreSQL's plan for NULL folds the
caller's part away and looks cheaper than the generic plan, so the generic plan never won, and planning was half of
each list's database CPU. Anonymous callers and users now have statements of their own."""

from __future__ import annotations

import uuid

import asyncpg

from tests.support.db import fresh_database
from veza_api.rooms import CHANNEL_LIST, ROOM_LIST
from veza_local.services import PostgresService

EXECUTIONS = 12  # PostgreSQL tries custom plans for the first five executions of a statement with parameters


async def test_each_list_statement_is_planned_once_and_reused(postgres: PostgresService) -> None:
    conn = await asyncpg.connect(await fresh_database(postgres, "listplans"))
    try:
        user = uuid.uuid4()
        await conn.execute("INSERT INTO users (id, email, display_name, password_hash) VALUES ($1, 'a@b.c', 'A', 'x')",
                           user)
        await conn.executemany("INSERT INTO rooms (name, title, visibility) VALUES ($1, $1, $2)",
                               [(f"room-{i}", "private" if i % 4 == 0 else "public") for i in range(20)])
        await conn.execute("INSERT INTO room_roles (room, user_id, role) VALUES ('room-0', $1, 'member')", user)
        for query in (ROOM_LIST, CHANNEL_LIST):
            public, mine = await conn.prepare(query.public), await conn.prepare(query.user)
            # Calls from anonymous callers and users interleave, as they do on an API's pooled connection.
            for _ in range(EXECUTIONS):
                await public.fetch()
                await mine.fetch(user)
            plans = {row["statement"]: (row["generic_plans"], row["custom_plans"]) for row in await conn.fetch(
                "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")}
            assert plans[query.public] == (EXECUTIONS, 0), "no parameter: one plan for every execution"
            generic, custom = plans[query.user]
            assert custom <= 5 and generic == EXECUTIONS - custom, "the user's statement settles on its generic plan"
        rooms = await conn.fetch(ROOM_LIST.user, user)
        assert [r["name"] for r in await conn.fetch(ROOM_LIST.public)] == sorted(
            f"room-{i}" for i in range(20) if i % 4), "anonymous: the public rooms"
        assert "room-0" in {r["name"] for r in rooms} and "room-4" not in {r["name"] for r in rooms}, \
            "a user: the public rooms and those they have a role in"
    finally:
        await conn.close()
