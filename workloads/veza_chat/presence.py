"""Who is in the room: Redis hashes per worker with a TTL, and the local fallback.

Each replica writes the users connected to it into its own hash
``<prefix>:presence:<worker>`` (TTL refreshed by heartbeats) and its id into the
sorted set ``<prefix>:workers`` (score = last heartbeat). A crashed replica stops
heartbeating, its hash expires, and the others notice its users are gone on their
next heartbeat and announce them as left. Joins and leaves also travel as NATS
signals, which keep a per-replica view (``remote``) current between heartbeats
and are the whole view while Redis is down (circuit open: documented fallback).

The room-level union is also kept in ``members_key`` (one field per present user),
the key the API reads for live member counts (docs/api.md): updated on every join
and leave, rewritten whole on every heartbeat, and expiring with the heartbeats.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from veza_core.breaker import CircuitBreaker


class Presence:
    def __init__(self, redis: aioredis.Redis | None, prefix: str, worker_id: str,
                 breaker: CircuitBreaker | None = None, *, members_key: str | None = None,
                 ttl: float = 15.0) -> None:
        self.redis = redis
        self.ttl = ttl
        self.worker_id = worker_id
        self.members_key = members_key
        self.workers_key = f"{prefix}:workers"
        self.key_prefix = f"{prefix}:presence:"
        self.breaker = breaker or CircuitBreaker("chat-presence", errors=(RedisError, OSError))
        self.local: dict[str, list[object]] = {}  # user -> [name, connections]
        self.remote: dict[str, dict[str, str]] = {}  # worker -> {user: name}
        # Joins and leaves are written to Redis in one pipeline per batch, in order: the writes that arrive while a
        # pipeline is out go together in the next. A crowd reconnecting at once (a worker restarted) made one round
        # trip each and queued for the connection pool, a second or more per join.
        self._pending: list[Callable[[Any], None]] = []
        self._batch: asyncio.Future[None] | None = None
        self._writing = asyncio.Lock()

    @property
    def heartbeat_every(self) -> float:
        """Three heartbeats per TTL: one lost heartbeat does not make a replica's users vanish."""
        return self.ttl / 3

    def present(self, user: str) -> bool:
        return user in self.local or any(user in users for users in self.remote.values())

    def count(self) -> int:
        """Users in the room (an upper bound: a user on two replicas counts twice)."""
        return len(self.local) + sum(len(u) for u in self.remote.values())

    def users(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for users in self.remote.values():
            found.update(users)
        found.update({u: str(v[0]) for u, v in self.local.items()})
        return found

    async def add(self, user: str, name: str) -> bool:
        """Count one more connection; True when the user just became present in the room."""
        entry = self.local.get(user)
        if entry is not None:
            entry[1] = int(entry[1]) + 1  # type: ignore[call-overload]
            return False
        was = self.present(user)
        self.local[user] = [name, 1]
        mine, members_key = self.key_prefix + self.worker_id, self.members_key if not was else None

        def join(pipe: Any) -> None:
            pipe.hset(mine, user, name)
            if members_key:
                pipe.hset(members_key, user, name)
                pipe.expire(members_key, max(1, round(self.ttl * 2)))

        await self._write(join)
        return not was

    async def remove(self, user: str) -> bool:
        """One connection less; True when the user just left the room."""
        entry = self.local.get(user)
        if entry is None:
            return False
        entry[1] = int(entry[1]) - 1  # type: ignore[call-overload]
        if int(entry[1]) > 0:  # type: ignore[call-overload]
            return False
        del self.local[user]
        gone = not self.present(user)
        mine, members_key = self.key_prefix + self.worker_id, self.members_key if gone else None

        def leave(pipe: Any) -> None:
            pipe.hdel(mine, user)
            if members_key:
                pipe.hdel(members_key, user)

        await self._write(leave)
        return gone

    def remote_change(self, worker: str, op: str, user: str, name: str) -> bool:
        """A join/leave signal from another replica; True when room-level presence changed."""
        was = self.present(user)
        users = self.remote.setdefault(worker, {})
        if op == "join":
            users[user] = name
        else:
            users.pop(user, None)
        return was != self.present(user)

    async def heartbeat(self) -> tuple[dict[str, str], list[str]] | None:
        """Refresh this replica's entry and re-read the others'; (joined, left) users, None if Redis is down."""
        return (await heartbeat_all([self]))[0]

    def _queue_beat(self, pipe: Any, now: float) -> int:
        """This replica's entry refreshed and the live replicas read, queued on `pipe`; how many commands."""
        mine = self.key_prefix + self.worker_id
        pipe.delete(mine)
        if self.local:
            pipe.hset(mine, mapping={u: str(v[0]) for u, v in self.local.items()})
        pipe.expire(mine, max(1, round(self.ttl)))
        pipe.zadd(self.workers_key, {self.worker_id: now})
        pipe.zremrangebyscore(self.workers_key, "-inf", now - self.ttl)
        pipe.expire(self.workers_key, max(1, round(self.ttl * 4)))
        pipe.zrangebyscore(self.workers_key, now - self.ttl, "+inf")
        return 7 if self.local else 6

    def _queue_members(self, pipe: Any) -> None:
        """The room-level union of present users, rewritten whole (the key the API reads for member counts)."""
        assert self.members_key is not None
        users = self.users()
        pipe.delete(self.members_key)
        if users:
            mapping: dict[Any, Any] = dict(users)  # redis-py's Mapping type is invariant
            pipe.hset(self.members_key, mapping=mapping)
        pipe.expire(self.members_key, max(1, round(self.ttl * 2)))

    async def withdraw(self) -> None:
        """This replica leaves (graceful shutdown)."""
        self.local.clear()
        mine, workers_key, worker_id = self.key_prefix + self.worker_id, self.workers_key, self.worker_id

        def withdraw(pipe: Any) -> None:
            pipe.delete(mine)
            pipe.zrem(workers_key, worker_id)

        await self._write(withdraw)  # after the joins and leaves queued before it

    async def _write(self, queue: Callable[[Any], None]) -> None:
        """Have `queue` put its commands on the next pipeline; return once that pipeline ran (or Redis was found
        down: the breaker's fallback writes nothing, the heartbeats rewrite it all once Redis is back)."""
        if self.redis is None:
            return
        self._pending.append(queue)
        if self._batch is None:
            self._batch = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().create_task(self._flush(self._batch))
        await asyncio.shield(self._batch)

    async def _flush(self, done: asyncio.Future[None]) -> None:
        try:
            async with self._writing:  # one pipeline at a time, so writes land in the order they were made
                queued, self._pending, self._batch = self._pending, [], None

                async def pipeline(r: aioredis.Redis) -> None:
                    async with r.pipeline(transaction=False) as pipe:
                        for queue in queued:
                            queue(pipe)
                        await pipe.execute()

                await self._redis(pipeline)
        finally:
            if not done.done():
                done.set_result(None)

    async def _redis(self, fn: Callable[[aioredis.Redis], Awaitable[object]]) -> None:
        client = self.redis
        if client is None:
            return

        async def op() -> None:
            await fn(client)

        async def fallback() -> None:
            return None

        await self.breaker.call(op, fallback)


async def heartbeat_all(rooms: list[Presence]) -> list[tuple[dict[str, str], list[str]] | None]:
    """The heartbeats of every room a worker serves (they share its Redis and breaker), in three round trips
    whatever their number: entries refreshed and live replicas read (one transaction), the other replicas' users
    read, the member sets rewritten. Per room: (joined, left) users, or None when Redis is down."""
    first = rooms[0] if rooms else None
    if first is None or first.redis is None:
        return [None] * len(rooms)
    redis = first.redis

    async def op() -> list[dict[str, dict[str, str]]]:
        now = time.time()
        async with redis.pipeline(transaction=True) as pipe:
            ends: list[int] = []
            for room in rooms:
                ends.append(room._queue_beat(pipe, now) + (ends[-1] if ends else 0))
            results = await pipe.execute()
        others: list[list[str]] = []
        for room, end in zip(rooms, ends, strict=True):
            workers = [w.decode() if isinstance(w, bytes) else str(w) for w in results[end - 1]]
            others.append([w for w in workers if w != room.worker_id])
        async with redis.pipeline(transaction=False) as pipe:
            for room, names in zip(rooms, others, strict=True):
                for w in names:
                    pipe.hgetall(room.key_prefix + w)
            hashes = iter(await pipe.execute())
        return [{w: {k.decode(): v.decode() for k, v in next(hashes).items()} for w in names} for names in others]

    async def down() -> None:
        return None

    befores = [room.users() for room in rooms]
    snapshots = await first.breaker.call(op, down)
    if snapshots is None:
        return [None] * len(rooms)
    for room, snapshot in zip(rooms, snapshots, strict=True):
        room.remote = snapshot
    tracked = [room for room in rooms if room.members_key]
    if tracked:

        async def rewrite() -> None:
            async with redis.pipeline(transaction=True) as pipe:
                for room in tracked:
                    room._queue_members(pipe)
                await pipe.execute()

        await first.breaker.call(rewrite, down)
    changes: list[tuple[dict[str, str], list[str]] | None] = []
    for room, before in zip(rooms, befores, strict=True):
        after = room.users()
        changes.append(({u: n for u, n in after.items() if u not in before}, [u for u in before if u not in after]))
    return changes
