"""Fan-out over NATS: committed events through JetStream, ephemeral signals over core NATS.

Each group commit is published as one JetStream message (``Nats-Msg-Id`` makes a
republish after a lost ack harmless) on ``veza.<platform>.room.<room>.events``;
every replica subscribes to that subject and feeds the events to its sequencer.
Publishes wait in an in-memory outbox while NATS is away and go out in order
when it returns; replicas that missed anything meanwhile fill the gap from
PostgreSQL (see room.py), so NATS being down delays nothing but fan-out.

It also hears the API: session revocations (``veza.<platform>.user.*.revoked``) and role changes
on the room (``veza.<platform>.room.<room>.membership``). Everything received is checked
(inbound.py) before it is handed on; what fails is dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import trace

from veza_core import bus, events
from veza_core.tracing import inject, remote_span

from . import inbound
from .protocol import dumps
from .room import Encoded

log = logging.getLogger(__name__)
tracer = trace.get_tracer("veza.chat")

OUTBOX_LIMIT = 10_000
MAX_EVENTS_BYTES = 8 * 1024 * 1024  # a group commit of a few thousand events at most (NATS allows 1 MiB by default)


class Fanout:
    def __init__(self, url: str | None, *, platform: str, room: str, worker_id: str,
                 on_events: Callable[[list[Encoded]], None],
                 on_signal: Callable[[inbound.PresenceSignal | inbound.FrameSignal | inbound.ModerationSignal], None],
                 on_revoked: Callable[[inbound.Revoked], None] | None = None,
                 on_membership: Callable[[inbound.Membership], None] | None = None,
                 auth: bus.NatsAuth | None = None,
                 on_jetstream: Callable[[JetStreamContext], None] | None = None) -> None:
        self.url = url
        self.platform = platform
        self.room = room
        self.worker_id = worker_id
        self.auth = auth
        self.on_events = on_events
        self.on_signal = on_signal
        self.on_revoked = on_revoked
        self.on_membership = on_membership
        self.on_jetstream = on_jetstream  # called once connected (the listen-along consumer starts there)
        self.events_subject = bus.subject(platform, "room", room, "events")
        self.signals_subject = bus.subject(platform, "room", room, "signals")
        self.revoked_subject = bus.subject(platform, "user", "*", "revoked")
        self.membership_subject = bus.subject(platform, "room", room, "membership")
        self.stream = "VEZA_CHAT_" + re.sub(r"[^A-Za-z0-9_-]", "_", f"{platform}_{room}")
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.outbox: deque[tuple[bytes, str, dict[str, str]]] = deque()  # payload, Nats-Msg-Id, trace headers
        self.wake = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.stats_stream_ready = False

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    def start(self) -> None:
        if self.url:
            self.tasks.append(asyncio.create_task(self._connect(), name="chat-nats-connect"))

    async def _connect(self) -> None:
        assert self.url is not None
        while self.nc is None:
            try:
                self.nc = await bus.connect(self.url, name=f"veza-chat-{self.room}-{self.worker_id}", auth=self.auth)
            except Exception as exc:
                log.warning("nats connect failed, retrying", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)
        self.js = self.nc.jetstream()
        while True:
            try:
                await bus.ensure_stream(self.js, self.stream, [self.events_subject], max_age=86400.0, max_msgs=100_000)
                break
            except Exception as exc:
                log.warning("jetstream stream setup failed, retrying", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)
        await self.nc.subscribe(self.events_subject, cb=self._on_events_msg, pending_msgs_limit=1_000_000)
        await self.nc.subscribe(self.signals_subject, cb=self._on_signal_msg, pending_msgs_limit=1_000_000)
        await self.nc.subscribe(self.revoked_subject, cb=self._on_revoked_msg)
        await self.nc.subscribe(self.membership_subject, cb=self._on_membership_msg)
        self.tasks.append(asyncio.create_task(self._publisher(), name="chat-nats-publisher"))
        if self.on_jetstream is not None:
            self.on_jetstream(self.js)

    async def close(self, flush_timeout: float = 2.0) -> None:
        if self.outbox and self.js is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wait_outbox_empty(), flush_timeout)
        for task in self.tasks:
            task.cancel()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), 2.0)

    async def _wait_outbox_empty(self) -> None:
        while self.outbox:  # noqa: ASYNC110 - a shutdown-only wait
            await asyncio.sleep(0.01)

    # -- committed events ---------------------------------------------------
    def publish_events(self, items: list[Encoded]) -> None:
        """One message per group commit: the worker id, then a line "<seq> <ts or -> <frame>" per
        event (frames are JSON text, which never holds a raw newline): receivers parse no JSON."""
        if not self.url:
            return
        lines = [self.worker_id] + [f"{seq} {'-' if ts is None else ts} {frame}" for seq, frame, ts in items]
        # The commit's trace context rides along (`traceparent`): the delivery on every replica continues it.
        self.outbox.append(("\n".join(lines).encode(), f"{self.room}:{items[0][0]}", inject()))
        if len(self.outbox) > OUTBOX_LIMIT:
            self.outbox.popleft()  # peers fill it from PostgreSQL
        self.wake.set()

    async def _publisher(self) -> None:
        assert self.js is not None
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.outbox:
                payload, msg_id, context = self.outbox[0]
                try:
                    await self.js.publish(self.events_subject, payload, timeout=2.0,
                                          headers={"Nats-Msg-Id": msg_id, **context})
                except Exception as exc:
                    log.warning("event publish failed, will retry", extra={"error": repr(exc)})
                    await asyncio.sleep(0.5)
                    continue
                if self.outbox and self.outbox[0][1] == msg_id:
                    self.outbox.popleft()

    async def _on_events_msg(self, msg: Msg) -> None:
        if len(msg.data) > MAX_EVENTS_BYTES:
            bus.reject(inbound.EVENTS, "too_large", size=len(msg.data))
            return
        try:
            worker, *lines = msg.data.decode().split("\n")
        except UnicodeDecodeError:
            bus.reject(inbound.EVENTS, "malformed")
            return
        if worker == self.worker_id:
            return
        if not re.fullmatch(inbound.WORKER_ID, worker):
            bus.reject(inbound.EVENTS, "malformed")
            return
        items: list[Encoded] = []
        for line in lines:
            item = inbound.event_line(line)
            if item is None:
                # One bad line spoils the message: what else it says is not to be trusted either.
                bus.reject(inbound.EVENTS, "malformed", line=line[:80])
                return
            items.append(item)
        if items:
            with remote_span(tracer, "chat deliver", msg.headers, kind=trace.SpanKind.CONSUMER,
                             attributes={"veza.room": self.room, "veza.events": len(items)}):
                self.on_events(items)

    # -- ephemeral signals -----------------------------------------------------
    async def signal(self, payload: dict[str, Any]) -> None:
        if not self.connected:
            return
        assert self.nc is not None
        with contextlib.suppress(Exception):
            await self.nc.publish(self.signals_subject, dumps({"w": self.worker_id, **payload}).encode())

    async def _on_signal_msg(self, msg: Msg) -> None:
        signal = bus.parse_json(inbound.Signal, msg.data, subject_kind=inbound.SIGNALS,
                                max_bytes=inbound.MAX_SIGNAL_BYTES)
        if signal is not None and signal.root.w != self.worker_id:
            self.on_signal(signal.root)

    # -- counts for analytics ------------------------------------------------------
    async def publish_connections(self, connections: int, at: float) -> None:
        """This replica's open sockets, a snapshot on core NATS that the platform's stats stream keeps (made here
        too, so counts are kept while no API is up); skipped while NATS is away."""
        if not self.connected:
            return
        assert self.nc is not None
        with contextlib.suppress(Exception):
            if not self.stats_stream_ready:
                self.stats_stream_ready = bool(await events.ensure_stats_stream(self.nc.jetstream(), self.platform))
            snapshot = events.RoomConnections(v=1, room=self.room, replica=self.worker_id, connections=connections,
                                              at=at)
            await self.nc.publish(events.ROOM_CONNECTIONS.subject(self.platform, self.room), events.payload(snapshot))

    # -- from the API ------------------------------------------------------------
    async def _on_revoked_msg(self, msg: Msg) -> None:
        revoked = bus.parse_json(inbound.Revoked, msg.data, subject_kind=inbound.REVOKED,
                                 max_bytes=inbound.MAX_CONTROL_BYTES)
        if revoked is None or self.on_revoked is None:
            return
        if msg.subject.split(".")[3:4] != [revoked.user]:
            bus.reject(inbound.REVOKED, "subject_mismatch", subject=msg.subject)
            return
        self.on_revoked(revoked)

    async def _on_membership_msg(self, msg: Msg) -> None:
        change = bus.parse_json(inbound.Membership, msg.data, subject_kind=inbound.MEMBERSHIP,
                                max_bytes=inbound.MAX_CONTROL_BYTES)
        if change is None or self.on_membership is None:
            return
        if change.room != self.room:
            bus.reject(inbound.MEMBERSHIP, "subject_mismatch", subject=msg.subject)
            return
        self.on_membership(change)
