"""Which replica encodes the channel, and what only the encoder does.

Replicas campaign for a Redis lock (:mod:`leader`); the holder encodes
(:meth:`Channel.start_encoding`), records, and pulls the relay upstream; the others serve
what it publishes (:mod:`replicator`). Without Redis a single replica leads from the start.
The lock's value carries the leader's URL, so a follower can forward a live source to it.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web
from redis.asyncio import Redis

from .channel import Channel
from .leader import LeaderLock
from .metrics import LEADER
from .recording import Recorder
from .relay import RelayPuller


class Leadership:
    def __init__(self, channel: Channel, *, identity: str, advertise_url: str, ttl: float,
                 relay: RelayPuller | None, recorder: Recorder | None) -> None:
        self.channel = channel
        self.identity = identity
        # Where the other replicas reach this one (live sources are forwarded to the leader's).
        self.advertise_url = advertise_url
        self.ttl = ttl
        self.relay = relay
        self.recorder = recorder
        self.lock: LeaderLock | None = None
        self._campaign: asyncio.Task[None] | None = None
        self._relay_task: asyncio.Task[None] | None = None

    async def start(self, redis: Redis | None, key: str) -> None:
        """Campaign for the lock at `key`, or lead at once when there is no Redis (a single replica)."""
        if redis is None:
            await self.elected()
            return
        self.lock = LeaderLock(redis, key, ttl=self.ttl, identity=f"{self.identity}|{self.advertise_url}")
        self._campaign = asyncio.create_task(self.lock.run(self.elected, self.deposed))

    async def stop_campaign(self) -> None:
        """Stop campaigning and pulling the relay; the lock is held until `release` (after encoding stopped)."""
        await self._stop_relay()
        if self._campaign is not None:
            self._campaign.cancel()
            with contextlib.suppress(BaseException):
                await self._campaign

    async def release(self) -> None:
        """Give the lock up, so that a successor takes over at once."""
        if self.lock is not None:
            await self.lock.release()

    async def elected(self) -> None:
        LEADER.labels(self.channel.name).set(1)
        if self.recorder is not None:
            self.recorder.start()
        self.channel.start_encoding()
        if self.relay is not None and self._relay_task is None:
            self._relay_task = asyncio.create_task(self.relay.run())  # only the encoder pulls the upstream

    async def deposed(self) -> None:
        LEADER.labels(self.channel.name).set(0)
        await self._stop_relay()
        await self.channel.stop_encoding()

    async def _stop_relay(self) -> None:
        if self._relay_task is not None:
            self._relay_task.cancel()
            with contextlib.suppress(BaseException):
                await self._relay_task
            self._relay_task = None

    async def leader_url(self) -> str | None:
        """The base URL of the replica that encodes, from the leader lock's value (None if unknown or us)."""
        if self.lock is None:
            return None
        try:
            value = await asyncio.wait_for(self.lock.redis.get(self.lock.key), 1)
        except Exception:
            return None
        if not value:
            return None
        holder, _, url = (value.decode() if isinstance(value, bytes) else str(value)).partition("|")
        if holder == self.identity or not url.startswith("http://"):
            return None
        return url


LEADERSHIP: web.AppKey[Leadership] = web.AppKey("stream_leadership", Leadership)
