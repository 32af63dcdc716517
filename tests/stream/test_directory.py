"""What the API relies on: the channel in the platform's directory, now-playing in Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from tests.stream.test_playlist import SPEC
from veza_core.db import migrate


async def test_channel_is_declared_and_now_playing_is_published(tracks: None, start_worker: Any, postgres: Any,
                                                               redis: Any) -> None:
    await migrate(postgres.url)
    worker = start_worker("listed", {**SPEC, "title": "Listed radio"}, VEZA_DATABASE_URL=postgres.url,
                          VEZA_REDIS_URL=redis.url)
    platform = worker.env["VEZA_PLATFORM"]
    conn = await asyncpg.connect(postgres.url)
    client = aioredis.from_url(redis.url)
    try:
        async def declared() -> Any:
            while (row := await conn.fetchrow("SELECT title FROM channels WHERE name = 'listed'")) is None:
                await asyncio.sleep(0.1)
            return row

        assert (await asyncio.wait_for(declared(), 20))["title"] == "Listed radio"

        key = f"veza:{platform}:channel:listed:now_playing"

        async def playing() -> dict[bytes, bytes]:
            while not (found := await client.hgetall(key)):
                await asyncio.sleep(0.1)
            return found

        now = await asyncio.wait_for(playing(), 20)
        assert now[b"title"] in (b"Tone A", b"Tone B") and now[b"channel"] == b"listed"
    finally:
        await conn.close()
        await client.aclose()
