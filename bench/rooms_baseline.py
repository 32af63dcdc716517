"""The API benchmark's baseline: `GET /api/v1/rooms` as the least a server can do for it.

    .venv/bin/python bench/rooms_baseline.py PORT DATABASE_URL REDIS_URL PLATFORM [orjson]

A minimal aiohttp + asyncpg (+ redis-py) handler without authentication, middleware, rate limits or error
handling, answering the same JSON as veza_api.rooms.list_rooms for an anonymous caller as cheaply as it can: the
API's own statement for an anonymous list (`ROOM_LIST.public`: the public rooms with their public channel, no
parameter, so PostgreSQL plans it once per connection) and the member counts from Redis in one pipeline, reused for
a second as the API reuses them, and its pool gives connections back without asyncpg's reset statement, as the
API's does (so neither side is charged work the other skips). It encodes its answer as a minimal aiohttp handler
does, with aiohttp's `json_response` (the standard library's encoder, timestamps formatted by `isoformat`); with
`orjson` it encodes as the API does (with veza_core.web.json_response), so that the benchmark also shows what the API
costs beyond its query and its encoding. What the real route adds on top of this is the cost of being a real API
(tokens, revocation, limits, logging, metrics, tracing).
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from veza_api.rooms import ROOM_LIST
from veza_core.db import keep_session
from veza_core.eventloop import new_event_loop
from veza_core.web import json_response

ROOMS = web.AppKey("rooms", dict)


async def list_rooms(request: web.Request) -> web.Response:
    state: dict[str, Any] = request.app[ROOMS]
    pool: asyncpg.Pool = state["pool"]
    rows = await pool.fetch(ROOM_LIST.public)
    names = tuple(row["name"] for row in rows)
    cached = state.get("counts")
    if cached is None or cached[0] != names or time.monotonic() - cached[1] > 1.0:
        async with state["redis"].pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hlen(f"veza:{state['platform']}:room:{name}:members")
            cached = state["counts"] = (names, time.monotonic(), await pipe.execute())
    stamp, respond = state["encoding"]
    return respond({"rooms": [
        {"name": row["name"], "title": row["title"], "visibility": row["visibility"],
         "updated_at": stamp(row["updated_at"]), "member_count": count, "channel": row["channel"]}
        for row, count in zip(rows, cached[2], strict=True)]})


def _as_is(value: Any) -> Any:
    return value


# How the answer is encoded: as a minimal aiohttp handler does (timestamps formatted first), or as the API does
# (orjson, which writes the timestamps itself).
ENCODINGS = {"stdlib": (datetime.isoformat, web.json_response), "orjson": (_as_is, json_response)}


async def start(app: web.Application) -> None:
    database_url, redis_url, platform = sys.argv[2:5]
    app[ROOMS] = {"pool": await asyncpg.create_pool(database_url, min_size=1, max_size=10, reset=keep_session),
                  "redis": aioredis.from_url(redis_url), "platform": platform,
                  "encoding": ENCODINGS["orjson" if sys.argv[5:6] == ["orjson"] else "stdlib"]}


async def ready(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    app = web.Application()
    app.on_startup.append(start)
    app.router.add_get("/api/v1/rooms", list_rooms)
    app.router.add_get("/readyz", ready)
    # On the event loop the API runs on (VEZA_EVENT_LOOP, uvloop unless set): neither side gets a cheaper loop.
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None,
                loop=new_event_loop())


if __name__ == "__main__":
    main()
