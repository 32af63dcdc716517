"""The sessions a replica found active, kept for a moment and forgotten on a revocation's notice.

A busy session's requests then need not ask Redis each whether it was revoked (services/sessions.py says how
revocation works; this is the replica's side of its notices).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from veza_core import tasks

log = logging.getLogger("veza.api")


class ActiveSessions:
    """The sessions this replica found active (in Redis or PostgreSQL), trusted for `seconds` without asking again,
    and forgotten on a revocation's notice (`listen`). Only used while subscribed to the notices."""

    HEARTBEAT_SECONDS = 5.0  # a subscription silent this long is pinged; twice as long, it is taken as broken
    MAX_SESSIONS = 100_000

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.listening = False
        # Bumped by every notice: an answer read before a notice is not kept after it (it may be the old one).
        self.generation = 0
        self._until: dict[uuid.UUID, float] = {}

    def active(self, sid: uuid.UUID) -> bool:
        return self.listening and self._until.get(sid, 0.0) > time.monotonic()

    def remember(self, sid: uuid.UUID, generation: int) -> None:
        """`sid` was found active by a read begun at `generation`."""
        if not self.listening or generation != self.generation or self.seconds <= 0:
            return
        if len(self._until) >= self.MAX_SESSIONS and sid not in self._until:
            self._until.clear()  # sessions come and go: start over rather than grow
        self._until[sid] = time.monotonic() + self.seconds

    def forget(self, session_ids: Iterable[uuid.UUID]) -> None:
        self.generation += 1
        for sid in session_ids:
            self._until.pop(sid, None)

    def forget_all(self) -> None:
        self.generation += 1
        self._until.clear()

    def _stopped(self) -> None:
        self.listening = False
        self.forget_all()

    async def listen(self, url: str, channel: str) -> None:
        """Follow the revocation notices on `channel` until cancelled, subscribing again after any failure."""
        if self.seconds <= 0:
            return
        while True:
            client = aioredis.from_url(url, socket_connect_timeout=1.0)
            subscription = client.pubsub()
            try:
                await self._follow(subscription, channel)
            except Exception as exc:
                tasks.raise_if_cancelled(exc)
                if self.listening:
                    log.warning("revocation notices lost; asking Redis for every session until back",
                                extra={"error": repr(exc)})
            finally:
                self._stopped()
                for closing in (subscription, client):  # closing a broken connection must not end the loop
                    with contextlib.suppress(Exception):
                        await closing.aclose()
            await asyncio.sleep(1.0)

    async def _follow(self, subscription: PubSub, channel: str) -> None:
        await subscription.subscribe(channel)
        quiet = 0
        while True:
            message = await subscription.get_message(timeout=self.HEARTBEAT_SECONDS)
            if message is None:
                quiet += 1
                if quiet > 1:
                    raise TimeoutError("no answer to a ping on the revocation notices")
                await subscription.ping()
                continue
            quiet = 0
            if message["type"] == "subscribe":
                self.forget_all()  # notices sent before now were missed
                self.listening = True
            elif message["type"] == "message":
                self.forget(_session_ids(message["data"]))


def _session_ids(data: bytes) -> list[uuid.UUID]:
    found = []
    for word in data.split():
        try:
            found.append(uuid.UUID(word.decode()))
        except (UnicodeDecodeError, ValueError):
            continue
    return found
