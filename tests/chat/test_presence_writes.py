"""Presence under a crowd: joins and leaves made at once (a worker restarted, its sockets all coming back) are written
to Redis together, in the order they were made, and each caller returns once its write is there."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import redis.asyncio as aioredis

from veza_chat.presence import Presence


async def test_a_crowd_of_joins_and_leaves_lands_in_redis_in_order(redis: Any, monkeypatch: Any) -> None:
    client = aioredis.Redis.from_url(redis.url)
    prefix = f"veza:t:chat:crowd{secrets.token_hex(4)}"
    presence = Presence(client, prefix, "w1", members_key=f"{prefix}:members")
    mine = f"{prefix}:presence:w1"
    sent: list[int] = []
    execute = aioredis.client.Pipeline.execute

    async def counted(pipe: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(len(pipe.command_stack))
        return await execute(pipe, *args, **kwargs)

    monkeypatch.setattr(aioredis.client.Pipeline, "execute", counted)  # counts the round trips, then sends
    try:
        joined = await asyncio.gather(*(presence.add(f"u{i}", f"User {i}") for i in range(500)))
        assert all(joined)
        # Every caller returned after its write: all 500 are in Redis, in far fewer round trips than joins.
        assert len(await client.hgetall(mine)) == 500
        assert len(await client.hgetall(f"{prefix}:members")) == 500
        assert len(sent) < 10, sent
        # A leave and a join of the same user made in that order end with the user present (and the reverse absent).
        await asyncio.gather(presence.remove("u0"), presence.add("u0", "User 0"),
                             presence.add("u1", "User 1"), presence.remove("u1"), presence.remove("u1"))
        users = await client.hgetall(mine)
        assert b"u0" in users and b"u1" not in users and len(users) == 499
        assert set(await client.hgetall(f"{prefix}:members")) == set(users)
        await presence.withdraw()
        assert not await client.exists(mine)
    finally:
        await client.aclose()
