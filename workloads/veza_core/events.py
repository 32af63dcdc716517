"""The catalog of what travels on Veza's NATS bus: every subject, its payload model, who publishes it, who
consumes it and how (docs/events.md; docs/events/asyncapi.yaml and docs/schemas/events/v1/ are generated
from this module: ``python -m veza_core.events --write``).

Versions: a payload's major version is in its schema's path (``docs/schemas/events/v<N>/<event>.json``) and,
for every JSON payload that crosses from one workload to another, in the payload itself as ``"v": <N>``. Within a
version, producers may only add optional fields and consumers ignore the fields they do not know; anything else
(a field removed, renamed or retyped, a new meaning) is the next version, on a new schema path.

Idempotency: every event a consumer must not apply twice carries an ``id`` (the same id for the same fact, so a
republish, a redelivery or a second producer replica stating it again is recognised); events that state a
whole state (a role, a snapshot of counts) are idempotent by their content.

Consumers read what arrives through :func:`parse` (or :func:`veza_core.bus.parse_json`): what is too large, not
JSON or not valid is dropped and counted in ``veza_bus_rejected_total{subject_kind, reason}``, never raised.
Consumers that must not miss an event use :func:`durable_subscribe` (JetStream, explicit acks).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import BaseModel, ConfigDict, Field, RootModel, StringConstraints

from . import bus

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

SCHEMA_BASE = "https://veza.dev/schemas/events/v1/"
MAX_CONTROL_BYTES = 4096  # an event from the API or a now-playing is a few ids and a title
MAX_SIGNAL_BYTES = 64 * 1024

# -- shared field types ---------------------------------------------------------------------------
ResourceName = Annotated[str, StringConstraints(min_length=1, max_length=253)]  # a custom resource's name
UserId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Name = Annotated[str, StringConstraints(max_length=256)]
EventId = Annotated[str, StringConstraints(min_length=1, max_length=300)]
Epoch = Annotated[float, Field(ge=0, le=1e11, description="Unix time in seconds")]  # beyond the year 5000 is not a time
Title = Annotated[str, StringConstraints(max_length=1024)]
WORKER_ID = r"^[0-9a-f]{12}$"


class Event(BaseModel):
    """A v1 payload between workloads: unknown fields are ignored (a newer producer may add optional ones)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    v: Literal[1] = Field(description="The payload's major version")


# -- from the API --------------------------------------------------------------------------------
class Revoked(Event):
    """Sessions ended: the chat workers close the WebSockets they authorised."""

    user: UserId
    session: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = Field(
        description="The session ended, or null: every session of the user")
    reason: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        description='Why: "logout", "reused", "disabled", "email_verified", …')


class Membership(Event):
    """A user's role on a room changed (null: removed or banned); the chat workers re-check their sockets."""

    room: ResourceName
    user: UserId
    role: Literal["owner", "moderator", "member"] | None


class _Lifecycle(Event):
    """What a room's and a channel's lifecycle events share."""

    id: EventId = Field(description="Unique per event: consumers apply each id once")
    action: Literal["created", "updated", "deleted"]
    title: Annotated[str, StringConstraints(max_length=200)] | None = Field(description="null when deleted")
    visibility: Literal["public", "private"] | None = Field(description="null when deleted")
    at: Epoch


class RoomLifecycle(_Lifecycle):
    """A room was created, updated or deleted in the API's directory (the operator declares ChatRooms there)."""

    room: ResourceName


class ChannelLifecycle(_Lifecycle):
    """A channel was created, updated or deleted in the API's directory (the operator declares StreamChannels)."""

    channel: ResourceName


class ModerationDecision(Event):
    """A moderator's decision on a room, once committed (the chat workers enforce it from PostgreSQL)."""

    id: EventId = Field(description='"<room>:<decision number>": the same decision always has the same id')
    room: ResourceName
    action: Literal["ban", "unban", "mute", "unmute"]
    user_id: UserId
    actor: UserId = Field(description="Who decided (a user id)")
    reason: Annotated[str, StringConstraints(max_length=500)]
    until: Epoch | None = Field(description="When the sanction ends; null: until lifted")
    at: Epoch


# -- from the stream workers ----------------------------------------------------------------------
class NowPlaying(Event):
    """What a channel plays now, from the replica that encodes it, at each track change."""

    id: EventId = Field(description='"<channel>:<started_at in ms>": the same track start always has the same id')
    channel: ResourceName
    title: Title
    track_id: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = Field(
        None, description="The track's id in the channel's library, when the title is one of its tracks")
    started_at: Epoch = Field(description="When the track went on air")
    at: Epoch = Field(description="When this event was published")


class ListenerCounts(Event):
    """One replica's listeners per rendition, every 5 s (a snapshot: the newest per replica wins)."""

    channel: ResourceName
    replica: Annotated[str, StringConstraints(min_length=1, max_length=253)]
    listeners: dict[Annotated[str, StringConstraints(max_length=63)], Annotated[int, Field(ge=0)]]
    at: Epoch


# -- from the chat workers ----------------------------------------------------------------------
class RoomConnections(Event):
    """One chat replica's open sockets and message rate on its room, every 5 s (the newest per replica wins)."""

    room: ResourceName
    replica: Annotated[str, StringConstraints(pattern=WORKER_ID)] = Field(description="The replica's worker id")
    connections: Annotated[int, Field(ge=0)]
    at: Epoch
    messages_per_second: float = Field(
        0.0, ge=0, allow_inf_nan=False,
        description="Sequenced events this replica committed per second over its last snapshot interval "
                    "(0 from workers that predate the field)")


# -- between the replicas of one room ------------------------------------------------------------
class _Peer(BaseModel):
    """A signal from another replica of this room (more members may come from newer replicas)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    w: Annotated[str, StringConstraints(pattern=WORKER_ID)] = Field(description="The sending replica's id")


class PresenceSignal(_Peer):
    kind: Literal["presence"]
    op: Literal["join", "leave"]
    user: UserId
    name: Name = ""


class FrameSignal(_Peer):
    kind: Literal["frame"]
    frame: Annotated[str, StringConstraints(max_length=16 * 1024)] = Field(
        description="An ephemeral frame (JSON text) for the room's sockets, rebuilt from its validated fields")


class ModerationSignal(_Peer):
    kind: Literal["moderation"]
    action: Literal["mute", "unmute", "kick", "ban", "unban"]
    user: UserId
    until: Epoch | None = None
    frame: Annotated[str, StringConstraints(max_length=4096)]


class Signal(RootModel[PresenceSignal | FrameSignal | ModerationSignal]):
    """An ephemeral signal between the replicas of one room: presence, relayed frames, moderation."""

    root: Annotated[PresenceSignal | FrameSignal | ModerationSignal, Field(discriminator="kind")]


# -- the catalog -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Subject:
    """One subject of the bus: where it is, what it carries, who says it and who listens, and how."""

    name: str  # the schema's file name and the AsyncAPI message name
    kind: str  # `<kind>.<event>`, as counted in veza_bus_rejected_total{subject_kind}
    summary: str
    parameter: str  # the subject's name token: room, channel or user
    model: type[BaseModel] | None  # None: not JSON (see `schema`)
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    delivery: Literal["jetstream", "core"]
    stream: str | None = None  # the JetStream stream that keeps it
    durable: bool = False  # consumers read it through a durable consumer with explicit acks
    idempotency: str = ""
    content_type: str = "application/json"
    schema: dict[str, Any] | None = None  # the payload's schema when there is no model

    @property
    def event(self) -> str:
        return self.kind.split(".", 1)[1]

    @property
    def address(self) -> str:
        """The AsyncAPI address: `veza.{platform}.<kind>.{<parameter>}.<event>`."""
        return f"veza.{{platform}}.{self.kind.split('.')[0]}.{{{self.parameter}}}.{self.event}"

    def subject(self, platform: str, name: str) -> str:
        return bus.subject(platform, self.kind.split(".")[0], name, self.event)

    def json_schema(self) -> dict[str, Any]:
        body = self.model.model_json_schema() if self.model is not None else dict(self.schema or {})
        return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"{SCHEMA_BASE}{self.name}.json",
                **body}


ROOM_EVENTS = Subject(
    "room-events", "room.events", "Committed chat events of one room, one message per group commit", "room",
    None, producers=("chat",), consumers=("chat", "api"), delivery="jetstream", stream="VEZA_CHAT_<platform>_<room>",
    idempotency="the events' seq (receivers deliver each seq once; analytics: `<room>:<seq>:<event id>`); "
    "Nats-Msg-Id `<room>:<first seq>`",
    content_type="text/plain",
    schema={"title": "room events", "type": "string",
            "description": "The committing replica's id (12 hex digits), then one line per event: `<seq> <ts in ms or "
                           "-> <event frame>`, where the frame is the server frame of docs/schemas/chat/v1 with "
                           "type `event` and that very seq.",
            "pattern": r"^[0-9a-f]{12}(\n[1-9][0-9]{0,18} ([0-9]{1,15}|-) \{\"type\":\"event\",\"seq\":[0-9]+,.*\})+$"})
ROOM_SIGNALS = Subject(
    "room-signals", "room.signals", "Ephemeral signals between the replicas of one room", "room", Signal,
    producers=("chat",), consumers=("chat",), delivery="core", idempotency="none needed: presence and frames are "
    "ephemeral, moderation is applied only when PostgreSQL confirms it", content_type="application/json")
ROOM_MEMBERSHIP = Subject(
    "room-membership", "room.membership", "A user's role on a room changed", "room", Membership,
    producers=("api",), consumers=("chat",), delivery="core",
    idempotency="the new role is a state, not a delta: applying it twice changes nothing")
ROOM_LIFECYCLE = Subject(
    "room-lifecycle", "room.lifecycle", "A room was created, updated or deleted", "room", RoomLifecycle,
    producers=("api",), consumers=("chat",), delivery="core", idempotency="`id`")
ROOM_MODERATION = Subject(
    "room-moderation", "room.moderation", "A moderation decision on a room", "room", ModerationDecision,
    producers=("api",), consumers=(), delivery="core", idempotency="`id`")
USER_REVOKED = Subject(
    "user-revoked", "user.revoked", "A user's sessions ended", "user", Revoked,
    producers=("api",), consumers=("chat",), delivery="core",
    idempotency="closing what is already closed changes nothing")
CHANNEL_LIFECYCLE = Subject(
    "channel-lifecycle", "channel.lifecycle", "A channel was created, updated or deleted", "channel",
    ChannelLifecycle, producers=("api",), consumers=(), delivery="core", idempotency="`id`")
CHANNEL_AUDIO = Subject(
    "channel-audio", "channel.audio", "The leader's encoded audio, for the other replicas of the channel", "channel",
    None, producers=("stream",), consumers=("stream",), delivery="core",
    idempotency="timestamps: a follower serves each timeline position once", content_type="application/octet-stream",
    schema={"title": "channel audio", "type": "string", "contentMediaType": "application/octet-stream",
            "description": "A batch in the binary wire format of docs/streaming.md (\"Replicas and leadership\")."})
CHANNEL_NOWPLAYING = Subject(
    "channel-nowplaying", "channel.nowplaying", "What a channel plays now, at each track change", "channel",
    NowPlaying, producers=("stream",), consumers=("chat", "api"), delivery="jetstream",
    stream="VEZA_CHANNELS_<platform>",
    durable=True, idempotency="`id` (also the Nats-Msg-Id: the stream drops a republish within 2 minutes)")
CHANNEL_LISTENERS = Subject(
    "channel-listeners", "channel.listeners", "One replica's listener counts, every 5 s", "channel",
    ListenerCounts, producers=("stream",), consumers=("api",), delivery="jetstream", stream="VEZA_STATS_<platform>",
    durable=True, idempotency="a snapshot: the newest per replica wins; analytics: `<channel>:<replica>:<at>`")
ROOM_CONNECTIONS = Subject(
    "room-connections", "room.connections", "One chat replica's open sockets on its room, every 5 s", "room",
    RoomConnections, producers=("chat",), consumers=("api",), delivery="jetstream", stream="VEZA_STATS_<platform>",
    durable=True, idempotency="a snapshot: the newest per replica wins; analytics: `<room>:<replica>:<at>`")

CATALOG: tuple[Subject, ...] = (
    ROOM_EVENTS, ROOM_SIGNALS, ROOM_MEMBERSHIP, ROOM_LIFECYCLE, ROOM_MODERATION, USER_REVOKED,
    CHANNEL_LIFECYCLE, CHANNEL_AUDIO, CHANNEL_NOWPLAYING, CHANNEL_LISTENERS, ROOM_CONNECTIONS,
)


def by_subject(subject: str) -> Subject | None:
    """The catalog entry of a concrete subject (`veza.<platform>.<kind>.<name>.<event>`), or None."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[0] != "veza":
        return None
    kind = f"{parts[2]}.{parts[4]}"
    return next((s for s in CATALOG if s.kind == kind), None)


# -- producing -------------------------------------------------------------------------------------
def payload(event: BaseModel) -> bytes:
    """The wire form of an event (compact JSON, every field present)."""
    return event.model_dump_json().encode()


def new_id() -> str:
    return uuid.uuid4().hex


# -- consuming -------------------------------------------------------------------------------------
def parse(entry: Subject, model: type[M], data: bytes, *, max_bytes: int = MAX_CONTROL_BYTES) -> M | None:
    """`data` as `model`, or None, counted under the subject's kind, when it is too large, not JSON or invalid."""
    return bus.parse_json(model, data, subject_kind=entry.kind, max_bytes=max_bytes)


# -- JetStream ----------------------------------------------------------------------------------------
CHANNELS_MAX_AGE = 24 * 3600.0  # a consumer down longer than a day catches up with the newest day only
CHANNELS_MAX_MSGS_PER_SUBJECT = 1000


def channels_stream(platform: str) -> str:
    return "VEZA_CHANNELS_" + re.sub(r"[^A-Za-z0-9_-]", "_", platform)


async def ensure_channels_stream(js: JetStreamContext, platform: str) -> str:
    """Create (or bring up to date) the platform's stream of channel events; producers and consumers both call it,
    so whichever starts first makes it. Limits-based: the newest day, at most 1000 events per channel."""
    name = channels_stream(platform)
    await bus.ensure_stream(js, name, [CHANNEL_NOWPLAYING.subject(platform, "*")], max_age=CHANNELS_MAX_AGE,
                            max_msgs_per_subject=CHANNELS_MAX_MSGS_PER_SUBJECT)
    return name


STATS_MAX_AGE = 24 * 3600.0
STATS_MAX_MSGS_PER_SUBJECT = 50_000  # a day of one channel's (room's) snapshots from 2-3 replicas


def stats_stream(platform: str) -> str:
    return "VEZA_STATS_" + re.sub(r"[^A-Za-z0-9_-]", "_", platform)


async def ensure_stats_stream(js: JetStreamContext, platform: str) -> str:
    """Create (or bring up to date) the platform's stream of counts snapshots (listeners per channel, connections
    per room), which the producers publish on core NATS and JetStream keeps for the analytics consumer; producers
    and the consumer all call it. Limits-based: the newest day."""
    name = stats_stream(platform)
    subjects = [CHANNEL_LISTENERS.subject(platform, "*"), ROOM_CONNECTIONS.subject(platform, "*")]
    await bus.ensure_stream(js, name, subjects, max_age=STATS_MAX_AGE, max_msgs_per_subject=STATS_MAX_MSGS_PER_SUBJECT)
    return name


async def durable_subscribe(js: JetStreamContext, *, stream: str, subject: str, durable: str,
                            handler: Callable[[Msg], Awaitable[None]], batch: int = 64, ack_wait: float = 30.0,
                            max_deliver: int = 5, deliver_policy: DeliverPolicy = DeliverPolicy.ALL,
                            ) -> asyncio.Task[None]:
    """Consume `subject` from `stream` through the durable pull consumer `durable`, in order, with explicit acks.

    The consumer lives in the server: a worker that restarts (same `durable`) goes on after the last message it
    acknowledged, so nothing published meanwhile is missed (within the stream's limits). `handler` is awaited for
    each message in stream order; the message is acked when it returns and nak'ed (redelivered after a second) when
    it raises, at most `max_deliver` times in all, so a message that always fails does not stall the consumer. A
    handler drops what does not validate by returning (count it: :func:`parse`), which acks it.

    At least once, not exactly once: a message whose ack was lost (a crash between the work and the ack) comes again
    once `ack_wait` is over, possibly after newer ones. Handlers are idempotent (the catalog's `id`) and, where
    order matters, keep the newest by the payload's own time (`started_at` of a now-playing).

    `deliver_policy` applies when the consumer is created (ALL: everything the stream still keeps; NEW: from now).
    Returns the task that fetches; cancel it to stop (the consumer stays, and so does its position). Replicas
    sharing one `durable` share the work; replicas that each need every message use a durable each.
    """
    config = ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait,
                            max_deliver=max_deliver, deliver_policy=deliver_policy, filter_subject=subject)
    sub = await js.pull_subscribe(subject, durable=durable, stream=stream, config=config)

    async def consume() -> None:
        current = asyncio.current_task()
        assert current is not None
        try:
            while True:
                try:
                    messages = await sub.fetch(batch, timeout=5.0)
                except TimeoutError as exc:  # nothing to fetch: nats-py says so with FetchTimeoutError or, when its
                    # lingering pull request went unanswered, a bare timeout (NATS being away is logged on its own)
                    if current.cancelling():
                        raise asyncio.CancelledError from exc
                    continue
                except ConnectionClosedError:  # closed for good (a shutdown): the consumer keeps our place
                    return
                except Exception as exc:  # NATS away: nats-py reconnects, the consumer keeps our place
                    if current.cancelling():  # nats-py may turn a cancellation into a timeout of its own
                        raise asyncio.CancelledError from exc
                    log.warning("durable fetch failed, retrying", extra={"durable": durable, "error": repr(exc)})
                    await asyncio.sleep(1.0)
                    continue
                for msg in messages:
                    try:
                        await handler(msg)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        log.warning("event handler failed, redelivering", extra={"durable": durable,
                                                                                 "error": repr(exc)})
                        with contextlib.suppress(Exception):
                            await msg.nak(delay=1.0)
                        continue
                    with contextlib.suppress(Exception):  # an ack lost: redelivered, and the handler is idempotent
                        await msg.ack()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    return asyncio.create_task(consume(), name=f"durable-{durable}")


# -- the documents -----------------------------------------------------------------------------------
ASYNCAPI = Path("docs/events/asyncapi.yaml")
SCHEMAS = Path("docs/schemas/events/v1")
_PARAMETERS = {
    "platform": "The VezaPlatform's name",
    "room": "The ChatRoom's name",
    "channel": "The StreamChannel's name",
    "user": "The user's id",
}
_SERVICES = {"api": "veza api", "chat": "veza chat", "stream": "veza stream"}


def _delivery(entry: Subject) -> str:
    if entry.delivery == "core":
        return "core NATS, at most once (best effort)"
    how = "durable consumer, explicit acks" if entry.durable else "subscription on the stream's subject"
    return f"JetStream stream `{entry.stream}`, {how}"


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of the catalog: a channel per subject, a send operation per producer and a
    receive operation per consumer, payloads by reference to the JSON Schemas."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for entry in CATALOG:
        messages[entry.name] = {
            "name": entry.name, "title": entry.kind, "summary": entry.summary, "contentType": entry.content_type,
            "payload": {"$ref": f"../schemas/events/v1/{entry.name}.json"},
        }
        channels[entry.name] = {
            "address": entry.address, "title": entry.kind,
            "description": f"{entry.summary}. Delivery: {_delivery(entry)}. Idempotency: {entry.idempotency}.",
            "messages": {entry.name: {"$ref": f"#/components/messages/{entry.name}"}},
            "parameters": {p: {"description": _PARAMETERS[p]} for p in ("platform", entry.parameter)},
        }
        for action, services in (("send", entry.producers), ("receive", entry.consumers)):
            for service in services:
                operations[f"{service}-{action}-{entry.name}"] = {
                    "action": action, "title": f"{_SERVICES[service]} {action}s {entry.kind}",
                    "channel": {"$ref": f"#/channels/{entry.name}"},
                    "messages": [{"$ref": f"#/channels/{entry.name}/messages/{entry.name}"}],
                }
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "Veza NATS bus", "version": "1.0.0",
                 "description": "Every subject Veza's workloads publish or consume (docs/events.md). Generated from "
                                "veza_core.events: `python -m veza_core.events --write`."},
        "defaultContentType": "application/json",
        "servers": {"nats": {"host": "nats:4222", "protocol": "nats",
                             "description": "The platform's NATS, JetStream enabled (docs/nats.md)"}},
        "channels": channels, "operations": operations, "components": {"messages": messages},
    }


def event_files(root: Path) -> dict[Path, str]:
    """What `--write` writes under the repository `root`: the AsyncAPI document and a JSON Schema per payload."""
    files = {root / ASYNCAPI: yaml.safe_dump(asyncapi(), sort_keys=False, width=120, allow_unicode=True)}
    for entry in CATALOG:
        files[root / SCHEMAS / f"{entry.name}.json"] = json.dumps(entry.json_schema(), indent=2,
                                                                  ensure_ascii=False) + "\n"
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m veza_core.events",
                                     description="Print the AsyncAPI document of the bus, or write it and the schemas")
    parser.add_argument("--write", metavar="REPO", nargs="?", const=".", default=None,
                        help="write docs/events/asyncapi.yaml and docs/schemas/events/v1/*.json under REPO")
    args = parser.parse_args(argv)
    if args.write is None:
        print(yaml.safe_dump(asyncapi(), sort_keys=False, width=120, allow_unicode=True), end="")
        return 0
    for path, text in event_files(Path(args.write)).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
