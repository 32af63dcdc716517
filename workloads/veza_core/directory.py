"""The platform's directory of rooms and channels (tables `rooms` and `channels`, migration 0003).

Each ChatRoom / StreamChannel custom resource has one row, which the API lists to
clients. Rows are declared by whoever knows the resource: its own workers at start
(title and visibility), the operator on a cluster and `veza up` locally through the API
(`PUT /api/v1/admin/{rooms|channels}/{name}`: also members, a room's channel binding, and
`DELETE` when the resource is gone).
"""

from __future__ import annotations

import json
from typing import Any, Literal

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


async def bind_channel(conn: asyncpg.Connection | asyncpg.Pool, room: str, channel: str | None) -> None:
    """Record the StreamChannel a room listens along with (its spec.channelRef; None: no binding)."""
    await conn.execute("UPDATE rooms SET channel = $2 WHERE name = $1 AND channel IS DISTINCT FROM $2",
                       room, channel)


async def set_renditions(conn: asyncpg.Connection | asyncpg.Pool, channel: str,
                         renditions: list[dict[str, str]] | None) -> None:
    """Record what a channel's players may ask for ([{name, codec}] from its spec; None: unknown)."""
    await conn.execute("UPDATE channels SET renditions = $2::jsonb WHERE name = $1", channel,
                       None if renditions is None else json.dumps(renditions))


def renditions_of(row: asyncpg.Record) -> list[dict[str, str]] | None:
    raw = row["renditions"]
    return None if raw is None else list(json.loads(raw))


async def bindings(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, dict[str, dict[str, Any]]]:
    """The web client's listen-along bindings of the public rooms and channels (nothing private is named)."""
    rooms = await conn.fetch(
        "SELECT r.name, r.title, c.name AS channel FROM rooms r LEFT JOIN channels c"
        " ON c.name = r.channel AND c.visibility = 'public' WHERE r.visibility = 'public' ORDER BY r.name")
    channels = await conn.fetch(
        "SELECT name, title, renditions FROM channels WHERE visibility = 'public' ORDER BY name")
    return {"rooms": {r["name"]: {"title": r["title"], "channel": r["channel"]} for r in rooms},
            "channels": {c["name"]: {"title": c["title"], **({"renditions": found} if (found := renditions_of(c))
                                                            is not None else {})} for c in channels}}
