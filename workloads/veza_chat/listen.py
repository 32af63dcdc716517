"""Listen-along: a room bound to a stream channel (`spec.channelRef`).

Track changes: the channel's now-playing events (JetStream, docs/events.md) are read through one durable
consumer per room and channel, shared by the room's replicas: each event is handled by one replica, which
stores it as a `nowplaying` event of the room's timeline (author `system`) and acks it. A replica that dies
before its ack has the event redelivered to another; the event's id is the stored event's client id, so a
redelivery (or the same event stated twice) is stored once. The consumer keeps its place in the server:
track changes made while every replica was down are stored when one comes back. A replica takes one event
at a time; two replicas may each hold one when a backlog is waiting (after an outage), so their seqs can come in
the other order then — the welcome's current track is the one that started last, whatever its seq.

Synchronized reactions: a `react_at` frame carries the sender's stream position; it is relayed to every
socket of the room on every replica as a `reaction_at` frame (ephemeral, like typing: not stored).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from veza_core import bus, events

from . import protocol as p
from .store import StoreUnavailable

log = logging.getLogger(__name__)

STORE_RETRY_SECONDS = 20.0  # a handler that cannot store gives the event back (nak) after this long
KIND = "nowplaying"


def durable_name(room: str, channel: str) -> str:
    """One durable consumer per (room, channel): a room bound to another channel starts afresh."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"chat-{room}-{channel}")


def meta(event: events.NowPlaying) -> dict[str, Any]:
    """What a stored `nowplaying` event says beyond its title (its `now_playing` member)."""
    out: dict[str, Any] = {"id": event.id, "channel": event.channel, "title": event.title,
                           "started_at": event.started_at}
    if event.track_id is not None:
        out["track_id"] = event.track_id
    return out


def welcome_now_playing(event: dict[str, Any]) -> dict[str, Any] | None:
    """What a welcome says of a stored `nowplaying` event (its `now_playing` and its seq), rebuilt from the fields
    it must have; None for any other event."""
    np, seq = event.get("now_playing"), event.get("seq")
    if event.get("kind") != KIND or not isinstance(np, dict) or not isinstance(seq, int):
        return None
    strings = {k: np.get(k) for k in ("id", "channel", "title", "track_id")}
    started = np.get("started_at")
    if not all(isinstance(strings[k], str) for k in ("id", "channel", "title")) or \
            not isinstance(started, (int, float)) or isinstance(started, bool):
        return None
    out = {k: v for k, v in strings.items() if isinstance(v, str)}
    return {**out, "started_at": started, "seq": seq}


class Follower:
    """Follows one channel's track changes for the room; `store` writes one into the timeline."""

    def __init__(self, *, platform: str, room: str, channel: str,
                 store: Callable[[events.NowPlaying], Awaitable[None]]) -> None:
        self.platform = platform
        self.channel = channel
        self.subject = events.CHANNEL_NOWPLAYING.subject(platform, channel)
        self.durable = durable_name(room, channel)
        self.store = store
        self.task: asyncio.Task[None] | None = None

    def start(self, js: JetStreamContext) -> None:
        self.task = asyncio.create_task(self._run(js), name="chat-listen-along")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task

    async def _run(self, js: JetStreamContext) -> None:
        while True:
            try:
                stream = await events.ensure_channels_stream(js, self.platform)
                # A fresh consumer starts at the track on air (the newest event), not the stream's whole day.
                consumer = await events.durable_subscribe(
                    js, stream=stream, subject=self.subject, durable=self.durable, handler=self._handle, batch=1,
                    deliver_policy=DeliverPolicy.LAST_PER_SUBJECT)
                break
            except Exception as exc:
                log.warning("jetstream stream setup failed, retrying", extra={"error": repr(exc)})  # the channel stream
                await asyncio.sleep(1.0)
        try:
            await consumer
        finally:
            consumer.cancel()

    async def _handle(self, msg: Msg) -> None:
        event = events.parse(events.CHANNEL_NOWPLAYING, events.NowPlaying, msg.data)
        if event is None:
            return  # counted; acked so it does not come back
        if event.channel != self.channel:
            bus.reject(events.CHANNEL_NOWPLAYING.kind, "subject_mismatch", subject=msg.subject)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STORE_RETRY_SECONDS
        while True:
            try:
                await self.store(event)
                return
            except StoreUnavailable:
                if loop.time() >= deadline:
                    raise  # nak'ed: redelivered, here or on another replica
                await asyncio.sleep(0.5)


# -- synchronized reactions -------------------------------------------------------------------------
Position = Annotated[float, Field(gt=0, le=1e11)]


class _User(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: Annotated[str, StringConstraints(min_length=1, max_length=p.MAX_USER)]
    name: Annotated[str, StringConstraints(max_length=256)]


class ReactionAtFrame(BaseModel):
    """A `reaction_at` frame relayed by another replica, checked before it reaches a socket."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["reaction_at"]
    user: _User
    emoji: Annotated[str, StringConstraints(min_length=1, max_length=p.MAX_EMOJI)]
    position: Position


def relayed_reaction(text: str) -> dict[str, Any] | None:
    """A peer's relayed `reaction_at` frame, rebuilt from its validated fields (None, counted, when invalid)."""
    try:
        frame = ReactionAtFrame.model_validate(json.loads(text))
    except (ValueError, RecursionError):
        bus.reject(events.ROOM_SIGNALS.kind, "invalid_frame")
        return None
    return frame.model_dump()


def is_reaction_at(text: str) -> bool:
    """Whether a relayed frame claims to be a `reaction_at` (decided without parsing it)."""
    return text.startswith('{"type":"reaction_at"')
