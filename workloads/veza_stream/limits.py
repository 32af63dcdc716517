"""Listener limits across replicas: every replica's listener count in Redis, kept fresh by heartbeats.

Each replica writes its count to ``veza:{platform}:stream:{channel}:listeners:{replica}``
with a TTL (``ttl``, 10 s) every ``interval`` (2 s), and reads the other replicas' keys at
the same time. Admission is then a local decision (no Redis round trip per listener):
this replica's live count plus the others' counts as of the last heartbeat. A replica
that dies stops counting once its key expires. The others' counts are up to one interval
old, so a burst of connections spread over replicas can overshoot the limit by what
arrives within that interval.

When Redis cannot be reached, the limit applies per replica (this replica's count alone)
until a heartbeat succeeds again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class ListenerCounter:
    def __init__(self, redis: Any, prefix: str, replica: str, local: Callable[[], int], *, interval: float = 2.0,
                 ttl: float = 10.0) -> None:
        self.redis = redis
        self.prefix = prefix  # veza:{platform}:stream:{channel}:listeners
        self.key = f"{prefix}:{replica}"
        self.local = local
        self.interval = interval
        self.ttl = ttl
        self.others = 0
        self.shared = False  # True while the last heartbeat reached Redis
        self.last_ok = 0.0

    def total(self) -> int:
        """Listeners of the channel across replicas (this replica's alone when Redis is out of reach)."""
        if self.shared and time.monotonic() - self.last_ok < self.ttl:
            return self.local() + self.others
        return self.local()

    async def beat(self) -> None:
        mine = self.local()
        await self.redis.set(self.key, mine, px=int(self.ttl * 1000))
        keys = [k async for k in self.redis.scan_iter(match=f"{self.prefix}:*", count=100)]
        values = await self.redis.mget(keys) if keys else []
        self.others = sum(int(v) for k, v in zip(keys, values, strict=True)
                          if v is not None and (k.decode() if isinstance(k, bytes) else k) != self.key)
        self.shared = True
        self.last_ok = time.monotonic()

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.beat(), self.interval)
            except Exception as exc:
                if self.shared:
                    log.warning("listener counts unreachable: limits apply per replica", extra={"error": repr(exc)})
                self.shared = False
            await asyncio.sleep(self.interval)

    async def clear(self) -> None:
        try:
            await asyncio.wait_for(self.redis.delete(self.key), 1)
        except Exception as exc:
            log.info("listener count not cleared", extra={"error": repr(exc)})
