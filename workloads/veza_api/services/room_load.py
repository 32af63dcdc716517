"""Per-room load as the chat workers report it, for the operator's placement of rooms (docs/api.md, "Room load").

Every chat replica publishes a snapshot of each room it serves every 5 s on ``veza.<platform>.room.<room>.connections``
(`veza_core.events.RoomConnections`: open sockets and messages per second). Each API replica subscribes on core NATS
(not through a durable consumer: every replica keeps the whole table, and a snapshot missed is replaced 5 s later),
keeps the newest snapshot per (room, replica) and forgets a snapshot WINDOW_SECONDS after it arrived: a replica
silent that long is gone or cut off. Arrival is timed by this process's clock, so producers' clocks may drift.
An API replica that just started knows nothing for one snapshot period.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from veza_core import bus, events

WINDOW_SECONDS = 15.0  # three snapshot periods


@dataclass(frozen=True)
class Load:
    """One room's load, summed over the replicas with a live snapshot."""

    name: str
    connections: int
    messages_per_second: float
    replicas: int


class RoomLoad:
    """The newest RoomConnections snapshot of each (room, replica) heard within the window."""

    def __init__(self, platform: str, *, window: float = WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.platform = platform
        self.window = window
        self.clock = clock
        # (room, replica) -> (when it arrived, the snapshot)
        self._snapshots: dict[tuple[str, str], tuple[float, events.RoomConnections]] = {}
        self._swept = clock()
        self._subscribing: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None

    def start(self, connection: Callable[[], Awaitable[Client | None]]) -> None:
        """Subscribe once `connection` gives a NATS connection (none: the table stays empty)."""
        self._subscribing = asyncio.create_task(self._subscribe(connection), name="api-room-load")

    async def _subscribe(self, connection: Callable[[], Awaitable[Client | None]]) -> None:
        nc = await connection()
        if nc is not None:  # nats-py subscribes again by itself after a reconnect
            self._subscription = await nc.subscribe(events.ROOM_CONNECTIONS.subject(self.platform, "*"),
                                                    cb=self._on_message)

    async def stop(self) -> None:
        if self._subscribing is not None:
            self._subscribing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._subscribing
        if self._subscription is not None:
            with contextlib.suppress(Exception):  # the connection may be closed already
                await self._subscription.unsubscribe()

    async def _on_message(self, msg: Msg) -> None:
        self.take(msg.subject, msg.data)

    def take(self, subject: str, data: bytes) -> bool:
        """Keep one snapshot as it came from the bus; False (counted) when malformed or naming another room than
        its subject."""
        entry = events.ROOM_CONNECTIONS
        snapshot = events.parse(entry, events.RoomConnections, data)
        if snapshot is None:
            return False
        if subject.split(".")[3:4] != [snapshot.room]:
            bus.reject(entry.kind, "subject_mismatch", subject=subject)
            return False
        now = self.clock()
        key = (snapshot.room, snapshot.replica)
        kept = self._snapshots.get(key)
        # Newest by the producer's own time: one out of order does not replace a newer one still live.
        if kept is None or now - kept[0] > self.window or snapshot.at >= kept[1].at:
            self._snapshots[key] = (now, snapshot)
        if now - self._swept > self.window:  # forgotten even while nobody asks: rooms and replicas come and go
            self._sweep(now)
        return True

    def _sweep(self, now: float) -> None:
        self._swept = now
        for key in [k for k, (arrived, _) in self._snapshots.items() if now - arrived > self.window]:
            del self._snapshots[key]

    def rooms(self) -> list[Load]:
        """Every room with a live snapshot, by name."""
        self._sweep(self.clock())
        summed: dict[str, Load] = {}
        for (room, _), (_, snapshot) in self._snapshots.items():
            was = summed.get(room, Load(room, 0, 0.0, 0))
            summed[room] = Load(room, was.connections + snapshot.connections,
                                was.messages_per_second + snapshot.messages_per_second, was.replicas + 1)
        return [summed[room] for room in sorted(summed)]


ROOM_LOAD = web.AppKey("veza_api_room_load", RoomLoad)
