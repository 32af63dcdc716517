"""The platform's directory of rooms and channels (tables `rooms` and `channels`, migration 0003).

Each ChatRoom / StreamChannel custom resource has one row, which the API lists to
clients. Rows are declared by whoever knows the resource: its own workers at start
(so a cluster's directory follows its custom resources without any credentials),
and `veza up` or an admin through the API (`PUT /api/v1/admin/{rooms|channels}/{name}`).
"""

from __future__ import annotations

from typing import Literal

import asyncpg

Kind = Literal["room", "channel"]
TABLES: dict[str, str] = {"room": "rooms", "channel": "channels"}


async def declare(conn: asyncpg.Connection | asyncpg.Pool, kind: Kind, name: str, title: str,
                  visibility: str) -> asyncpg.Record:
    """Create or update the row; the returned record has `created` = whether it was new."""
    row = await conn.fetchrow(
        f"INSERT INTO {TABLES[kind]} (name, title, visibility) VALUES ($1, $2, $3)"  # noqa: S608 - fixed names
        " ON CONFLICT (name) DO UPDATE SET title = excluded.title, visibility = excluded.visibility,"
        " updated_at = now() RETURNING *, (xmax = 0) AS created", name, title, visibility)
    assert row is not None
    return row
