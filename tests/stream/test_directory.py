"""What the API relies on: the channel in the platform's directory, now-playing in Redis."""

from __future__ import annotations

from typing import Any

import asyncpg
import redis.asyncio as aioredis

from tests.support.stream import PLAYLIST_SPEC
from tests.support.waiting import wait_for
from veza_core.db import migrate


async def test_channel_is_declared_and_now_playing_is_published(tracks: None, start_worker: Any, postgres: Any,
                                                               redis: Any) -> None:
    await migrate(postgres.url)
    worker = start_worker("listed", {**PLAYLIST_SPEC, "title": "Listed radio"}, VEZA_DATABASE_URL=postgres.url,
                          VEZA_REDIS_URL=redis.url)
    platform = worker.env["VEZA_PLATFORM"]
    conn = await asyncpg.connect(postgres.url)
    client = aioredis.from_url(redis.url)
    try:
        row = await wait_for(lambda: conn.fetchrow("SELECT title FROM channels WHERE name = 'listed'"), timeout=20,
                             interval=0.1, message="the channel in the directory")
        assert row["title"] == "Listed radio"
        key = f"veza:{platform}:channel:listed:now_playing"
        now = await wait_for(lambda: client.hgetall(key), timeout=20, interval=0.1, message="now-playing in Redis")
        assert now[b"title"] in (b"Tone A", b"Tone B") and now[b"channel"] == b"listed"
    finally:
        await conn.close()
        await client.aclose()
