"""The API benchmark's baseline: `GET /api/v1/rooms` as the least a server can do for it.

    .venv/bin/python bench/rooms_baseline.py PORT DATABASE_URL REDIS_URL PLATFORM

A minimal aiohttp + asyncpg (+ redis-py) handler without authentication, middleware, rate limits or error
handling, running the same queries as veza_api.rooms.list_rooms for an anonymous caller (the visible rooms, their
member counts from Redis in one pipeline, the public channels) and answering the same JSON. What the real route
adds on top of this is the cost of being a real API (tokens, revocation, limits, logging, metrics, tracing).
"""

from __future__ import annotations

import sys
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

ROOMS = web.AppKey("rooms", dict)


async def list_rooms(request: web.Request) -> web.Response:
    state: dict[str, Any] = request.app[ROOMS]
    pool: asyncpg.Pool = state["pool"]
    rows = await pool.fetch("SELECT * FROM rooms t WHERE t.visibility = 'public' OR EXISTS ("
                            " SELECT 1 FROM room_roles r WHERE r.room = t.name AND r.user_id = $1) ORDER BY name", None)
    async with state["redis"].pipeline(transaction=False) as pipe:
        for row in rows:
            pipe.hlen(f"veza:{state['platform']}:room:{row['name']}:members")
        counts = await pipe.execute()
    public = {r["name"] for r in await pool.fetch("SELECT name FROM channels WHERE visibility = 'public'")}
    return web.json_response({"rooms": [
        {"name": row["name"], "title": row["title"], "visibility": row["visibility"],
         "updated_at": row["updated_at"].isoformat(), "member_count": count,
         "channel": row["channel"] if row["channel"] in public else None}
        for row, count in zip(rows, counts, strict=True)]})


async def start(app: web.Application) -> None:
    database_url, redis_url, platform = sys.argv[2:5]
    app[ROOMS] = {"pool": await asyncpg.create_pool(database_url, min_size=1, max_size=10),
                  "redis": aioredis.from_url(redis_url), "platform": platform}


def main() -> None:
    app = web.Application()
    app.on_startup.append(start)
    app.router.add_get("/api/v1/rooms", list_rooms)
    app.router.add_get("/readyz", lambda _: web.Response(text="ok"))
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
