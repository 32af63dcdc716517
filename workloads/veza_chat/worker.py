"""The chat worker process: what every room it serves shares, and which rooms those are.

A dedicated worker serves the one ChatRoom named in VEZA_RESOURCE_NAME (its spec in VEZA_RESOURCE_SPEC), from
boot to exit. A pool worker (`veza chat --pool`) serves every room the platform's directory marks `pooled`: a room
opens on its first request, with the worker spec the directory row holds, and is released once it has had no
socket for `VEZA_CHAT_POOL_IDLE_SECONDS`. When the directory moves a room elsewhere (the API's `room.lifecycle`
event says its row changed: promoted to its own workers, its spec changed, deleted), the pool releases it at once
and closes its sockets with 1012; clients reconnect, and the front door takes them where the room now lives.

What the rooms share is opened once per process: the PostgreSQL pool and read router, Redis and its breaker, the
NATS connection, the signing keys and the token verifier, the revocations the API announces, and the loops every
room needs (the catch-up poll, presence heartbeats, coalesced presence frames, load snapshots): one task each,
whatever the number of rooms, so a quiet room costs its objects and nothing that wakes up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web
from nats.aio.msg import Msg
from pydantic import ValidationError
from redis.exceptions import RedisError

from veza_core import bus, events
from veza_core.auth import AUDIENCE_CHAT, TokenVerifier
from veza_core.breaker import CircuitBreaker
from veza_core.db import create_pool, migrate
from veza_core.keys import KeySet
from veza_core.ratelimit import ScriptPipeline
from veza_core.replica import ReadRouter, read_url
from veza_core.web import HttpError

from . import inbound, metrics
from . import protocol as p
from .fanout import BusLink
from .presence import heartbeat_all
from .revocations import Revocations
from .service import ChatService
from .settings import ChatSettings
from .spec import RoomSpec
from .store import room_sanctions

log = logging.getLogger("veza.chat")

LOAD_EVERY = 5.0  # seconds between load snapshots (connections, messages/s per room), for analytics and autopilot
LOAD_EARLY = 1.0  # a room whose connections moved by LOAD_EARLY_FRACTION is reported this soon: promotion waits on it
LOAD_EARLY_FRACTION = 0.1


def load_snapshot_due(connections: int, committed: int, reported: tuple[int, float] | None, now: float) -> bool:
    """Whether a room's load snapshot is due: every LOAD_EVERY while it has sockets or traffic (and once more when
    it drops to nothing), and after LOAD_EARLY when its connections moved by a tenth since the last one (a room
    filling up reaches the operator's autopilot in about a second, not five). `reported`: the last snapshot's
    connections and time, None when the room was last reported idle (or never)."""
    if reported is None:
        return bool(connections or committed)
    last_connections, last_at = reported
    if now - last_at >= LOAD_EVERY:
        return True
    moved = abs(connections - last_connections)
    return now - last_at >= LOAD_EARLY and moved > 0 and moved >= LOAD_EARLY_FRACTION * last_connections
PRESENCE_COALESCE = 0.5  # join/leave frames are batched: one frame per room per window, however many users moved
SANCTIONS_EVERY = 10  # polls between reloads of the sanctions in force
PLACEMENT_POOLED = "pooled"
HEARTBEAT_BATCH = 500  # rooms per Redis transaction (a few thousand commands: Redis serves others in between)


class ChatWorker:
    def __init__(self, settings: ChatSettings, *, pooled: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        if not pooled and not settings.resource_name:
            raise ValueError("VEZA_RESOURCE_NAME (the ChatRoom's name) is required, or --pool")
        if not settings.database_url:
            raise ValueError("VEZA_DATABASE_URL is required")
        self.settings = settings
        self.pooled = pooled
        self.clock = clock  # epoch seconds: sanction expiry and retention by age
        # A dedicated worker's spec is checked before anything starts: a bad one is a configuration error.
        self.dedicated_spec = None if pooled else RoomSpec.model_validate(settings.resource_spec or {})
        self.worker_id = secrets.token_hex(6)
        self.keys = KeySet(settings.jwt_keys_dir)
        self.verifier = TokenVerifier(self.keys, issuer=settings.jwt_issuer, audience=AUDIENCE_CHAT,
                                      algorithms=settings.jwt_algorithms)
        self.revocations = Revocations(memory=settings.chat_revocation_memory_seconds, clock=clock)
        self.redis: aioredis.Redis | None = None
        if settings.redis_url:
            pool = aioredis.BlockingConnectionPool.from_url(
                settings.redis_url, max_connections=32, timeout=1.0, socket_timeout=0.5, socket_connect_timeout=0.5)
            self.redis = aioredis.Redis(connection_pool=pool)
        # One breaker for every Redis use: once Redis is known down, all of them go local at once.
        self.breaker = CircuitBreaker("chat-redis", errors=(RedisError, OSError))
        # The rate-limit scripts of every room go to Redis together, on one connection.
        self.scripts = ScriptPipeline(self.redis) if self.redis is not None else None
        label = "pool" if pooled else settings.resource_name
        self.link = BusLink(settings.nats_url, name=f"veza-chat-{label}-{self.worker_id}",
                            auth=settings) if settings.nats_url else None
        self.db: asyncpg.Pool | None = None
        self.router: ReadRouter | None = None
        self.rooms: dict[str, ChatService] = {}
        self.opening: dict[str, asyncio.Future[ChatService]] = {}
        self.presence_dirty: set[ChatService] = set()
        self.booted = asyncio.Event()
        self.draining = False
        self.tasks: list[asyncio.Task[Any]] = []
        self.stats_stream_ready = False

    # -- lifecycle --------------------------------------------------------
    async def start(self) -> None:
        if self.link is not None:
            self.link.start()
        self.tasks.append(asyncio.create_task(self._boot(), name="chat-boot"))

    async def _boot(self) -> None:
        settings = self.settings
        assert settings.database_url is not None
        while True:
            try:
                if settings.chat_migrate:
                    await migrate(settings.database_url)
                self.db = await create_pool(settings.database_url, min_size=2, max_size=16 if self.pooled else 8)
                self.router = ReadRouter(self.db, read_url(settings.database_url, settings.database_read_url,
                                                           settings.database_read_host),
                                         max_lag=settings.database_read_max_lag_seconds, component="chat")
                await self.router.start()
                break
            except Exception as exc:
                log.warning("database not reachable yet, retrying", extra={"error": repr(exc)})
                if self.db is not None:
                    with contextlib.suppress(Exception):
                        await self.db.close()
                    self.db = None
                await asyncio.sleep(1.0)
        if self.dedicated_spec is not None:
            assert settings.resource_name is not None
            service = ChatService(self, settings.resource_name, self.dedicated_spec)
            self.rooms[service.room_name] = service
            metrics.ROOMS.set(1)
            await service.open(retry=True)
        self.tasks += [asyncio.create_task(self._poll(), name="chat-poll"),
                       asyncio.create_task(self._heartbeat(), name="chat-presence"),
                       asyncio.create_task(self._presence_flush(), name="chat-presence-flush"),
                       asyncio.create_task(self._load_snapshots(), name="chat-load")]
        if self.link is not None:
            self.tasks.append(asyncio.create_task(self._subscribe(), name="chat-subscribe"))
        if self.pooled:
            self.tasks.append(asyncio.create_task(self._release_idle(), name="chat-pool-idle"))
            log.info("chat pool ready", extra={"worker": self.worker_id})
        self.booted.set()

    async def shutdown(self) -> None:
        """SIGTERM: every room refuses new sends, finishes the in-flight ones and closes its sockets with 1012."""
        self.draining = True
        await asyncio.gather(*(s.shutdown() for s in list(self.rooms.values())), return_exceptions=True)

    async def cleanup(self) -> None:
        for task in self.tasks:
            task.cancel()
        for service in list(self.rooms.values()):
            await service.cleanup()
        self.rooms.clear()
        if self.router is not None:
            await self.router.close()
        if self.db is not None:
            await self.db.close()
        if self.link is not None:
            await self.link.close()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()

    # -- which rooms ---------------------------------------------------------
    async def serving(self, name: str) -> ChatService:
        """The room's service, opening a pooled room on its first request; an HttpError when it is not served
        here (404), or not now (503: starting, draining, moved)."""
        if self.draining:
            raise HttpError(503, p.SHUTTING_DOWN, "the worker is restarting; reconnect")
        service = self.rooms.get(name)
        if service is None:
            ours = self.pooled or name == self.settings.resource_name
            if ours and not self.booted.is_set():  # a dedicated worker adds its room once it reached the database
                raise HttpError(503, "not_ready", "the worker is starting")
            if not self.pooled:
                raise HttpError(404, "room_not_found", "this worker does not serve that room")
            service = await self._open_pooled(name)
        service.check_serving()
        service.touched = time.monotonic()
        return service

    async def _open_pooled(self, name: str) -> ChatService:
        pending = self.opening.get(name)
        if pending is None:  # one open per room, however many requests wait for it
            pending = asyncio.ensure_future(self._open(name))
            self.opening[name] = pending
            pending.add_done_callback(lambda _: self.opening.pop(name, None))
        return await asyncio.shield(pending)

    async def _open(self, name: str) -> ChatService:
        spec = await self._pooled_spec(name)
        service = ChatService(self, name, spec)
        try:
            await service.open(retry=False)
        except Exception as exc:
            await service.cleanup()
            raise HttpError(503, p.STORE_UNAVAILABLE, f"the room cannot be opened now: {exc}") from None
        if self.draining:
            await service.cleanup()
            raise HttpError(503, p.SHUTTING_DOWN, "the worker is restarting; reconnect")
        self.rooms[name] = service
        metrics.ROOMS.set(len(self.rooms))
        log.info("pooled room opened", extra={"room": name, "rooms": len(self.rooms)})
        return service

    async def _pooled_spec(self, name: str) -> RoomSpec:
        """The worker spec the directory holds for a pooled room (404: no such room here; 503: it moved)."""
        assert self.db is not None
        try:
            row = await self.db.fetchrow("SELECT spec, placement FROM rooms WHERE name = $1", name)
        except (asyncpg.PostgresError, OSError) as exc:
            raise HttpError(503, p.STORE_UNAVAILABLE, f"the directory is unavailable: {exc}") from None
        if row is None or row["spec"] is None:
            raise HttpError(404, "room_not_found", "no such room")
        if row["placement"] != PLACEMENT_POOLED:
            raise HttpError(503, p.ROOM_MOVED, "the room is served by its own workers; reconnect")
        try:
            return RoomSpec.model_validate(json.loads(row["spec"]))
        except (ValueError, ValidationError) as exc:  # the API validates what it stores: only a hand edit gets here
            log.warning("pooled room spec invalid", extra={"room": name, "error": str(exc)[:300]})
            raise HttpError(503, "room_unavailable", "the room's spec is invalid") from None

    async def release(self, name: str, reason: str) -> None:
        """Stop serving a pooled room: in-flight sends are acknowledged, then its sockets close with 1012."""
        service = self.rooms.pop(name, None)
        if service is None:
            return
        metrics.ROOMS.set(len(self.rooms))
        metrics.ROOM_MOVES.labels(reason).inc()
        await service.shutdown()
        await service.cleanup()
        self.presence_dirty.discard(service)
        log.info("pooled room released", extra={"room": name, "reason": reason, "rooms": len(self.rooms)})

    async def _release_idle(self) -> None:
        idle = self.settings.chat_pool_idle_seconds
        while True:
            await asyncio.sleep(min(5.0, idle))
            now = time.monotonic()
            for name, service in list(self.rooms.items()):
                if not service.room.clients and now - service.touched >= idle:
                    await self.release(name, "idle")

    async def _recheck(self, name: str) -> None:
        """The directory row of an open pooled room changed: release the room unless it is still pooled here with
        the same spec."""
        service = self.rooms.get(name)
        if service is None or self.db is None:
            return
        try:
            row = await self.db.fetchrow("SELECT spec, placement FROM rooms WHERE name = $1", name)
        except (asyncpg.PostgresError, OSError):
            return  # the idle release or the next change decides
        if row is None:
            await self.release(name, "deleted")
        elif row["placement"] != PLACEMENT_POOLED:
            await self.release(name, "moved")
        elif not self._same_spec(row["spec"], service.spec):
            await self.release(name, "spec_changed")

    @staticmethod
    def _same_spec(stored: str | None, spec: RoomSpec) -> bool:
        try:
            return stored is not None and RoomSpec.model_validate(json.loads(stored)) == spec
        except (ValueError, ValidationError):
            return False

    # -- the loops every room needs ---------------------------------------------
    async def _poll(self) -> None:
        """Safety net under fan-out, for every open room in one query: whatever PostgreSQL committed reaches this
        worker's sockets; every tenth poll also reloads the sanctions in force."""
        ticks = 0
        while True:
            await asyncio.sleep(1.0 if self.link is not None and self.link.connected else 0.25)
            ticks += 1
            rooms = [s for s in self.rooms.values() if s.booted.is_set()]
            if not rooms or self.db is None:
                continue
            names = [s.room_name for s in rooms]
            try:
                lasts = {r["room"]: int(r["last_seq"]) for r in await self.db.fetch(
                    "SELECT room, last_seq FROM chat_rooms WHERE room = ANY($1::text[])", names)}
                sanctions = await room_sanctions(self.db, names) if ticks % SANCTIONS_EVERY == 0 else None
            except Exception as exc:
                log.warning("poll failed", extra={"error": repr(exc)})
                continue
            for service in rooms:
                try:
                    await service.polled(lasts.get(service.room_name, 0),
                                         None if sanctions is None else sanctions.get(service.room_name, []))
                except Exception as exc:
                    log.warning("poll failed", extra={"room": service.room_name, "error": repr(exc)})

    async def _heartbeat(self) -> None:
        """Presence heartbeats of the rooms with sockets here (a room without any has no one to tell), all of them
        in a few Redis round trips."""
        every = self.settings.chat_presence_ttl_seconds / 3
        while True:
            rooms = [s for s in self.rooms.values() if s.room.clients or s.presence.local]
            for i in range(0, len(rooms), HEARTBEAT_BATCH):
                batch = rooms[i:i + HEARTBEAT_BATCH]
                try:
                    changes = await heartbeat_all([s.presence for s in batch])
                except Exception as exc:
                    log.warning("presence heartbeat failed", extra={"error": repr(exc)})
                    continue
                for service, change in zip(batch, changes, strict=True):
                    service.heard(change)
            await asyncio.sleep(every)

    async def _presence_flush(self) -> None:
        while True:
            await asyncio.sleep(PRESENCE_COALESCE)
            dirty, self.presence_dirty = self.presence_dirty, set()
            for service in dirty:
                with contextlib.suppress(Exception):
                    await service.flush_presence()

    async def _load_snapshots(self) -> None:
        """Each room's open sockets and sequenced events per second on this worker, on the bus, when
        `load_snapshot_due` says so: analytics' peak connections and the operator's autopilot read them."""
        while True:
            await asyncio.sleep(LOAD_EARLY)
            if self.link is None or not self.link.connected:
                continue
            nc = await self.link.get()
            with contextlib.suppress(Exception):
                if not self.stats_stream_ready:
                    self.stats_stream_ready = bool(await events.ensure_stats_stream(nc.jetstream(),
                                                                                    self.settings.platform))
            at, now = time.time(), time.monotonic()
            for service in list(self.rooms.values()):
                connections = len(service.room.clients)
                reported = service.load_reported
                if not load_snapshot_due(connections, service.committed_since, reported, now):
                    continue
                elapsed = max(now - reported[1] if reported is not None else LOAD_EARLY, 1e-3)
                committed, service.committed_since = service.committed_since, 0
                service.load_reported = (connections, now) if connections or committed else None
                snapshot = events.RoomConnections(v=1, room=service.room_name, replica=self.worker_id,
                                                  connections=connections, at=at,
                                                  messages_per_second=round(committed / elapsed, 3))
                with contextlib.suppress(Exception):
                    await nc.publish(events.ROOM_CONNECTIONS.subject(self.settings.platform, service.room_name),
                                     events.payload(snapshot))

    # -- from the API --------------------------------------------------------------
    async def _subscribe(self) -> None:
        assert self.link is not None
        nc = await self.link.get()
        await nc.subscribe(bus.subject(self.settings.platform, "user", "*", "revoked"), cb=self._on_revoked_msg)
        if self.pooled:
            await nc.subscribe(events.ROOM_LIFECYCLE.subject(self.settings.platform, "*"), cb=self._on_lifecycle_msg)

    async def _on_revoked_msg(self, msg: Msg) -> None:
        revoked = bus.parse_json(inbound.Revoked, msg.data, subject_kind=inbound.REVOKED,
                                 max_bytes=inbound.MAX_CONTROL_BYTES)
        if revoked is None:
            return
        if msg.subject.split(".")[3:4] != [revoked.user]:
            bus.reject(inbound.REVOKED, "subject_mismatch", subject=msg.subject)
            return
        self.revocations.revoke(revoked.user, revoked.session)
        for service in list(self.rooms.values()):
            service.session_revoked(revoked)
        log.info("session revoked", extra={"user": revoked.user, "session": revoked.session,
                                           "reason": revoked.reason})

    async def _on_lifecycle_msg(self, msg: Msg) -> None:
        change = bus.parse_json(events.RoomLifecycle, msg.data, subject_kind=inbound.LIFECYCLE,
                                max_bytes=inbound.MAX_CONTROL_BYTES)
        if change is None:
            return
        if msg.subject.split(".")[3:4] != [change.room]:
            bus.reject(inbound.LIFECYCLE, "subject_mismatch", subject=msg.subject)
            return
        if change.room in self.rooms:
            task = asyncio.create_task(self._recheck(change.room))
            self.tasks.append(task)
            task.add_done_callback(self.tasks.remove)


WORKER = web.AppKey("chat_worker", ChatWorker)
