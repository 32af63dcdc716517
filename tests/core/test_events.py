"""The event catalog (`veza_core.events`): its documents are committed up to date and hang together, consumers drop
and count what does not validate, and a durable consumer restarted mid-stream misses nothing (real NATS JetStream)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import nats as nats_py
import pytest
import yaml
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from prometheus_client import REGISTRY

from tests.support.events import SCHEMAS, check
from tests.support.waiting import wait_for
from veza_core import events
from veza_local.services import NatsService

REPO = Path(__file__).resolve().parents[2]


def test_committed_event_documents_are_up_to_date() -> None:
    stale = [str(path.relative_to(REPO)) for path, text in events.event_files(REPO).items()
             if not path.exists() or path.read_text() != text]
    assert not stale, f"regenerate with `python -m veza_core.events --write`: {stale}"
    committed = {p.name for p in SCHEMAS.glob("*.json")}
    assert committed == {f"{e.name}.json" for e in events.CATALOG}, "a schema with no event in the catalog"


def test_the_asyncapi_document_hangs_together() -> None:
    doc = yaml.safe_load((REPO / events.ASYNCAPI).read_text())
    assert doc["asyncapi"] == "3.0.0"

    def resolve(ref: str) -> Any:
        assert ref.startswith("#/"), ref
        node = doc
        for part in ref[2:].split("/"):
            node = node[part]
        return node

    for name, channel in doc["channels"].items():
        params = {p.strip("{}") for p in channel["address"].split(".") if p.startswith("{")}
        assert params == set(channel["parameters"]), name
        for message in channel["messages"].values():
            payload = resolve(message["$ref"])["payload"]["$ref"]
            schema = json.loads((REPO / events.ASYNCAPI).parent.joinpath(payload).resolve().read_text())
            jsonschema.Draft202012Validator.check_schema(schema)
            assert schema["$id"].endswith(f"/v1/{name}.json")
    for name, operation in doc["operations"].items():
        assert operation["action"] in ("send", "receive"), name
        channel = resolve(operation["channel"]["$ref"])
        for message in operation["messages"]:
            assert message["$ref"].startswith(operation["channel"]["$ref"] + "/messages/")
            assert resolve(message["$ref"]) in channel["messages"].values()
    # Every subject someone consumes has a producer; every JSON payload between workloads carries its version.
    for entry in events.CATALOG:
        assert f"{entry.producers[0]}-send-{entry.name}" in doc["operations"]
        if entry.model is not None and set(entry.producers) != set(entry.consumers):
            assert "v" in entry.json_schema()["required"], entry.name


def test_catalog_payloads_validate_against_their_committed_schemas() -> None:
    now = time.time()
    samples: dict[str, Any] = {
        "channel.nowplaying": events.NowPlaying(v=1, id=f"radio:{round(now * 1000)}", channel="radio", title="Tone A",
                                                started_at=now, at=now),
        "channel.listeners": events.ListenerCounts(v=1, channel="radio", replica="pod-1", listeners={"mp3": 3},
                                                   at=now),
        "room.lifecycle": events.RoomLifecycle(v=1, id=events.new_id(), room="lobby", action="deleted", title=None,
                                               visibility=None, at=now),
        "room.moderation": events.ModerationDecision(v=1, id="lobby:7", room="lobby", action="mute", user_id="u",
                                                     actor="m", reason="", until=now + 60, at=now),
    }
    for kind, event in samples.items():
        entry, body = check(f"veza.p.{kind.split('.')[0]}.x.{kind.split('.')[1]}", events.payload(event))
        assert entry.kind == kind and body["v"] == 1
    with pytest.raises(AssertionError, match="1 was expected"):
        check("veza.p.channel.radio.nowplaying", json.dumps({**json.loads(events.payload(
            samples["channel.nowplaying"])), "v": 2}).encode())


def _rejected(kind: str, reason: str) -> float:
    return REGISTRY.get_sample_value("veza_bus_rejected_total", {"subject_kind": kind, "reason": reason}) or 0.0


def test_what_does_not_validate_is_dropped_and_counted() -> None:
    entry = events.CHANNEL_NOWPLAYING
    good = events.NowPlaying(v=1, id="radio:1", channel="radio", title="t", started_at=1.0, at=2.0)
    assert events.parse(entry, events.NowPlaying, events.payload(good)) == good
    for data, reason in ((b"{not json", "malformed"), (b"[" * 100_000, "too_large"),
                         (b'{"v": 1, "channel": "radio"}', "invalid"),
                         (events.payload(good).replace(b'"v":1', b'"v":2'), "invalid")):
        before = _rejected(entry.kind, reason)
        assert events.parse(entry, events.NowPlaying, data) is None
        assert _rejected(entry.kind, reason) == before + 1, reason


async def _publish(js: Any, platform: str, channel: str, n: int) -> events.NowPlaying:
    event = events.NowPlaying(v=1, id=f"{channel}:{n}", channel=channel, title=f"track {n}", started_at=float(n),
                              at=time.time())
    ack = await js.publish(events.CHANNEL_NOWPLAYING.subject(platform, channel), events.payload(event),
                           headers={"Nats-Msg-Id": event.id})
    assert ack.stream == events.channels_stream(platform)
    return event


async def test_a_durable_consumer_restarted_mid_stream_misses_nothing(nats: NatsService) -> None:
    platform, durable = f"ev{uuid.uuid4().hex[:8]}", "listen-along"
    subject = events.CHANNEL_NOWPLAYING.subject(platform, "*")
    producer = await nats_py.connect(nats.url)
    js = producer.jetstream()
    stream = await events.ensure_channels_stream(js, platform)
    assert await events.ensure_channels_stream(js, platform) == stream  # a second worker starting: no change
    handled: list[str] = []
    crashing = asyncio.Event()

    async def first_life(msg: Msg) -> None:
        event = events.parse(events.CHANNEL_NOWPLAYING, events.NowPlaying, msg.data)
        assert event is not None
        if event.id == "radio:3":  # the worker dies while handling the fourth event, before its ack
            crashing.set()
            await asyncio.Event().wait()
        handled.append(event.id)

    consumer = await nats_py.connect(nats.url)
    task = await events.durable_subscribe(consumer.jetstream(), stream=stream, subject=subject, durable=durable,
                                          handler=first_life, ack_wait=1.0)
    try:
        for n in range(6):
            await _publish(js, platform, "radio", n)
        await asyncio.wait_for(crashing.wait(), 10)
    finally:
        task.cancel()
        await consumer.close()  # gone without a goodbye
    assert handled == ["radio:0", "radio:1", "radio:2"]

    # While no consumer runs the channel goes on, and a republish of an event already stored is dropped.
    for n in range(6, 10):
        await _publish(js, platform, "radio", n)
    await _publish(js, platform, "radio", 8)
    assert (await js.stream_info(stream)).state.messages == 10

    seen: list[str] = []

    async def second_life(msg: Msg) -> None:
        event = events.parse(events.CHANNEL_NOWPLAYING, events.NowPlaying, msg.data)
        if event is not None and event.id not in handled + seen:  # idempotent: an id is applied once
            seen.append(event.id)

    restarted = await nats_py.connect(nats.url)
    task = await events.durable_subscribe(restarted.jetstream(), stream=stream, subject=subject, durable=durable,
                                          handler=second_life, ack_wait=1.0, deliver_policy=DeliverPolicy.NEW)
    try:
        await wait_for(lambda: len(seen) == 7, timeout=15, message="the events after the last ack")
        # Everything after the last ack and nothing acknowledged before it (the position is the server's: NEW does
        # not apply to a consumer that exists); what the first life fetched but never acked comes again once its
        # ack wait is over, possibly after newer events.
        assert sorted(seen) == [f"radio:{n}" for n in range(3, 10)]
        info = await wait_for(lambda: _settled(restarted, stream, durable), timeout=10, message="every event acked")
        assert info.num_pending == 0
    finally:
        task.cancel()
        await restarted.close()
        await producer.close()


async def _settled(nc: Any, stream: str, durable: str) -> Any:
    info = await nc.jetstream().consumer_info(stream, durable)
    return info if info.num_ack_pending == 0 and info.num_pending == 0 else None


async def test_a_message_that_always_fails_does_not_stall_the_durable_consumer(nats: NatsService) -> None:
    platform = f"ev{uuid.uuid4().hex[:8]}"
    nc = await nats_py.connect(nats.url)
    js = nc.jetstream()
    stream = await events.ensure_channels_stream(js, platform)
    attempts: list[str] = []

    async def handler(msg: Msg) -> None:
        event = events.parse(events.CHANNEL_NOWPLAYING, events.NowPlaying, msg.data)
        assert event is not None
        attempts.append(event.id)
        if event.id == "radio:0":
            raise RuntimeError("a bug in the handler")

    task = await events.durable_subscribe(js, stream=stream, subject=events.CHANNEL_NOWPLAYING.subject(platform, "*"),
                                          durable="poisoned", handler=handler, max_deliver=2)
    try:
        for n in range(3):
            await _publish(js, platform, "radio", n)
        await wait_for(lambda: attempts.count("radio:0") == 2 and "radio:2" in attempts, timeout=15,
                       message="two attempts at the failing event, and the others handled")
        assert attempts.count("radio:1") == 1 and attempts.count("radio:2") == 1
    finally:
        task.cancel()
        await nc.close()
