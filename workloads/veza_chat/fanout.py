"""Fan-out over NATS: committed events through JetStream, ephemeral signals over core NATS.

Each group commit is published as one JetStream message (``Nats-Msg-Id`` makes a
republish after a lost ack harmless) on ``veza.<platform>.room.<room>.events``;
every replica subscribes to that subject and feeds the events to its sequencer.
Publishes wait in an in-memory outbox while NATS is away and go out in order
when it returns; replicas that missed anything meanwhile fill the gap from
PostgreSQL (see room.py), so NATS being down delays nothing but fan-out.

It also hears the API's role changes on the room (``veza.<platform>.room.<room>.membership``).
Everything received is checked (inbound.py) before it is handed on; what fails is dropped and counted.
Every room of a worker shares the worker's one NATS connection (`BusLink`): a room subscribes to its
own subjects when it opens and unsubscribes when it is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from opentelemetry import trace

from veza_core import bus, tasks
from veza_core.tracing import inject, remote_span

from . import inbound
from .protocol import dumps
from .room import Encoded

log = logging.getLogger(__name__)
tracer = trace.get_tracer("veza.chat")

OUTBOX_LIMIT = 10_000
MAX_EVENTS_BYTES = 8 * 1024 * 1024  # a group commit of a few thousand events at most (NATS allows 1 MiB by default)
PUBLISH_WINDOW = 64  # group commits published and not yet acked, at most
PUBLISH_TIMEOUT = 2.0


@dataclass(slots=True)
class Outgoing:
    """One group commit's message, in the outbox until JetStream has acked it and everything before it."""
    payload: bytes
    msg_id: str  # Nats-Msg-Id: the room and the commit's first seq
    context: dict[str, str]  # trace headers
    ack: asyncio.Future[Any] | None = None  # the publish in flight, if it was sent


class BusLink:
    """The worker's one NATS connection, shared by every room it serves: connected in the background (retried
    until NATS answers), closed with the worker."""

    def __init__(self, url: str, *, name: str, auth: bus.NatsAuth | None = None) -> None:
        self.url = url
        self.name = name
        self.auth = auth
        self.nc: Client | None = None
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    def start(self) -> None:
        self.task = asyncio.create_task(self._connect(), name="chat-nats-connect")

    async def _connect(self) -> None:
        while self.nc is None:
            try:
                # A replica hears the other replicas' commits and signals on its rooms' subjects; its own would
                # come back to it, once per commit, only to be dropped.
                self.nc = await bus.connect(self.url, name=self.name, auth=self.auth, no_echo=True)
            except Exception as exc:
                tasks.raise_if_cancelled(exc)
                log.warning("nats connect failed, retrying", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)
        self.ready.set()

    async def get(self) -> Client:
        await self.ready.wait()
        assert self.nc is not None
        return self.nc

    async def close(self) -> None:
        if self.task is not None and not await tasks.stop(self.task):
            log.warning("nats connect did not stop")
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), 2.0)


class Fanout:
    def __init__(self, link: BusLink | None, *, platform: str, room: str, worker_id: str,
                 on_events: Callable[[list[Encoded]], None],
                 on_signal: Callable[[inbound.PresenceSignal | inbound.FrameSignal | inbound.ModerationSignal], None],
                 on_membership: Callable[[inbound.Membership], None] | None = None,
                 on_jetstream: Callable[[JetStreamContext], None] | None = None) -> None:
        self.link = link
        self.platform = platform
        self.room = room
        self.worker_id = worker_id
        self.on_events = on_events
        self.on_signal = on_signal
        self.on_membership = on_membership
        self.on_jetstream = on_jetstream  # called once connected (the listen-along consumer starts there)
        self.events_subject = bus.subject(platform, "room", room, "events")
        self.signals_subject = bus.subject(platform, "room", room, "signals")
        self.membership_subject = bus.subject(platform, "room", room, "membership")
        self.stream = "VEZA_CHAT_" + re.sub(r"[^A-Za-z0-9_-]", "_", f"{platform}_{room}")
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.subscriptions: list[Subscription] = []
        self.outbox: deque[Outgoing] = deque()
        self.wake = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    def start(self) -> None:
        if self.link is not None:
            self.tasks.append(asyncio.create_task(self._connect(), name="chat-fanout"))

    async def _connect(self) -> None:
        assert self.link is not None
        self.nc = await self.link.get()
        self.js = self.nc.jetstream()
        while True:
            try:
                await bus.ensure_stream(self.js, self.stream, [self.events_subject], max_age=86400.0, max_msgs=100_000)
                break
            except Exception as exc:
                log.warning("jetstream stream setup failed, retrying", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)
        self.subscriptions = [
            await self.nc.subscribe(self.events_subject, cb=self._on_events_msg, pending_msgs_limit=1_000_000),
            await self.nc.subscribe(self.signals_subject, cb=self._on_signal_msg, pending_msgs_limit=1_000_000),
            await self.nc.subscribe(self.membership_subject, cb=self._on_membership_msg)]
        self.tasks.append(asyncio.create_task(self._publisher(), name="chat-nats-publisher"))
        if self.on_jetstream is not None:
            self.on_jetstream(self.js)

    async def close(self, flush_timeout: float = 2.0) -> None:
        if self.outbox and self.js is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wait_outbox_empty(), flush_timeout)
        for task in self.tasks:
            task.cancel()
        for item in self.outbox:
            if item.ack is not None:
                item.ack.cancel()
        for sub in self.subscriptions:  # the connection is the worker's: only this room's interest ends
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self.subscriptions = []

    async def _wait_outbox_empty(self) -> None:
        while self.outbox:  # noqa: ASYNC110 - a shutdown-only wait
            await asyncio.sleep(0.01)

    # -- committed events ---------------------------------------------------
    def publish_events(self, items: list[Encoded]) -> None:
        """One message per group commit: the worker id, then a line "<seq> <ts or -> <frame>" per
        event (frames are JSON text, which never holds a raw newline): receivers parse no JSON."""
        if self.link is None:
            return
        lines = [self.worker_id] + [f"{seq} {'-' if ts is None else ts} {frame}" for seq, frame, ts in items]
        # The commit's trace context rides along (`traceparent`): the delivery on every replica continues it.
        self.outbox.append(Outgoing("\n".join(lines).encode(), f"{self.room}:{items[0][0]}", inject()))
        if len(self.outbox) > OUTBOX_LIMIT:
            dropped = self.outbox.popleft()  # peers fill it from PostgreSQL
            if dropped.ack is not None:
                dropped.ack.cancel()
        self.wake.set()

    async def _publisher(self) -> None:
        """Publishes the outbox in order without waiting for each ack before the next message: a commit waiting
        behind the previous one's round trip (10-20 ms on a busy worker) reached the other replicas late enough
        for them to fill it from PostgreSQL instead. A message leaves the outbox once it and every message before it
        are acked; after a failure everything from the failed one on is published again (`Nats-Msg-Id` makes the
        repeats harmless), so nothing is skipped."""
        assert self.js is not None
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.outbox and self.outbox[0].ack is not None and self.outbox[0].ack.done():
                ack = self.outbox[0].ack
                error = ack.exception() if not ack.cancelled() else asyncio.CancelledError("publish cancelled")
                if error is not None:
                    log.warning("event publish failed, will retry", extra={"error": repr(error)})
                    for item in self.outbox:
                        if item.ack is not None:
                            item.ack.cancel()
                            item.ack = None
                    await asyncio.sleep(0.5)
                    break
                self.outbox.popleft()
            for item in itertools.islice(self.outbox, PUBLISH_WINDOW):
                if item.ack is None:
                    item.ack = asyncio.ensure_future(self.js.publish(
                        self.events_subject, item.payload, timeout=PUBLISH_TIMEOUT,
                        headers={"Nats-Msg-Id": item.msg_id, **item.context}))
                    item.ack.add_done_callback(self._acked)

    def _acked(self, ack: asyncio.Future[Any]) -> None:
        if not ack.cancelled():
            ack.exception()  # read here: the publisher reads only the first failure in order
        self.wake.set()

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

    # -- from the API ------------------------------------------------------------
    async def _on_membership_msg(self, msg: Msg) -> None:
        change = bus.parse_json(inbound.Membership, msg.data, subject_kind=inbound.MEMBERSHIP,
                                max_bytes=inbound.MAX_CONTROL_BYTES)
        if change is None or self.on_membership is None:
            return
        if change.room != self.room:
            bus.reject(inbound.MEMBERSHIP, "subject_mismatch", subject=msg.subject)
            return
        self.on_membership(change)
