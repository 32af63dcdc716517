"""One encoder per channel across replicas: a Redis lock with a TTL, renewed while held.

The holder renews every ttl/3. If it cannot reach Redis it steps down once the
TTL it last secured has run out (the lock may be someone else's by then), so two
replicas never both believe they lead for longer than the clock drift between them.
A replica that shuts down releases the lock, so a successor takes over at once.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

log = logging.getLogger(__name__)

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class LeaderLock:
    def __init__(self, redis: Redis, key: str, *, ttl: float = 3.0, identity: str | None = None) -> None:
        self.redis = redis
        self.key = key
        self.ttl = ttl
        self.identity = identity or f"{socket.gethostname()}-{secrets.token_hex(4)}"
        self.is_leader = False
        self._valid_until = 0.0

    async def _try(self) -> bool:
        ttl_ms = int(self.ttl * 1000)
        started = time.monotonic()
        if self.is_leader:
            held = bool(await self.redis.eval(_RENEW, 1, self.key, self.identity, ttl_ms))
        else:
            held = bool(await self.redis.set(self.key, self.identity, nx=True, px=ttl_ms))
        if held:
            self._valid_until = started + self.ttl
        return held

    async def run(self, elected: Callable[[], Awaitable[None]], deposed: Callable[[], Awaitable[None]]) -> None:
        """Campaign forever (cancel to stop); calls `elected`/`deposed` on each change."""
        while True:
            try:
                held = await asyncio.wait_for(self._try(), self.ttl / 3)
            except Exception as exc:
                log.warning("leader lock unreachable", extra={"key": self.key, "error": repr(exc)})
                held = self.is_leader and time.monotonic() < self._valid_until
            if held != self.is_leader:
                self.is_leader = held
                log.info("leadership " + ("acquired" if held else "lost"), extra={"key": self.key,
                                                                                   "identity": self.identity})
                await (elected() if held else deposed())
            await asyncio.sleep(self.ttl / 3)

    async def release(self) -> None:
        if self.is_leader:
            self.is_leader = False
            try:
                await self.redis.eval(_RELEASE, 1, self.key, self.identity)
            except Exception as exc:
                log.warning("leader lock release failed", extra={"error": repr(exc)})
