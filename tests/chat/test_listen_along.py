"""Listen-along in the chat worker, against real PostgreSQL, NATS (JetStream) and Redis: the bound channel's
track changes become `nowplaying` events of the room's timeline (delivered live on every replica, in history,
in resume, once each, in the welcome), a worker that was down misses none, and a reaction made at a stream
position reaches every replica's sockets with that position."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.chat import (
    FAST_SPEC,
    NATS_PASSWORDS,
    Chat,
    ChatClient,
    authorized_nats,
    consumer_done,
    publish_now_playing,
)
from veza_chat.listen import durable_name


def bound_spec(channel: str) -> dict[str, Any]:
    return {**FAST_SPEC, "channelRef": {"name": channel}}


def now_playing_events(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if f.get("kind") == "nowplaying"]


async def history(client: ChatClient) -> list[dict[str, Any]]:
    ref = uuid.uuid4().hex[:8]
    await client.send({"type": "history", "ref": ref, "limit": 200})
    return (await client.expect("history", ref=ref))["events"]


async def test_track_changes_reach_both_replicas_once_and_stay_in_the_timeline(chat: Chat, nats: Any) -> None:
    channel = "c" + uuid.uuid4().hex[:8]
    spec = bound_spec(channel)
    w1, w2 = await chat.worker(spec), await chat.worker(spec)
    alice, bob = await chat.connect(w1, "alice"), await chat.connect(w2, "bob")
    assert alice.welcome["room"]["channel"] == channel and "now_playing" not in alice.welcome
    await alice.send({"type": "send", "cid": "m1", "text": "before the track"})
    await alice.expect("ack", cid="m1")

    sent = time.monotonic()
    first = await publish_now_playing(nats.url, channel, "Artist - First", track_id="t-1")
    got = [await c.expect("event", kind="nowplaying", timeout=5) for c in (alice, bob)]
    elapsed = time.monotonic() - sent
    assert elapsed < 2.0, f"a track change took {elapsed:.2f} s to reach both replicas' clients"
    assert got[0] == got[1]
    event = got[0]
    assert event["author"]["id"] == "system" and event["text"] == "Artist - First"
    assert event["now_playing"] == {"id": first["id"], "channel": channel, "title": "Artist - First",
                                    "track_id": "t-1", "started_at": first["started_at"]}

    # The same event twice on the stream (a producer that lost its ack and republished after the duplicate
    # window): stored once.
    await publish_now_playing(nats.url, channel, "Artist - First", started_at=first["started_at"],
                              msg_id=uuid.uuid4().hex)
    second = await publish_now_playing(nats.url, channel, "Artist - Second")
    for c in (alice, bob):
        await c.expect("event", kind="nowplaying", text="Artist - Second", timeout=5)
    await consumer_done(nats.url, durable_name(chat.room, channel))
    await alice.send({"type": "send", "cid": "m2", "text": "after the tracks"})
    await alice.expect("ack", cid="m2")
    await bob.expect("event", text="after the tracks")
    for c in (alice, bob):
        assert [e["text"] for e in now_playing_events(c.frames)] == ["Artist - First", "Artist - Second"]

    # In order with messages, in history and in a resume.
    timeline = [e["text"] for e in await history(bob)]
    assert timeline == ["before the track", "Artist - First", "Artist - Second", "after the tracks"]
    carol = await chat.connect(w2, "carol", after=0)
    resumed = await carol.expect("resumed")
    replayed = [f["text"] for f in carol.frames if f["type"] == "event"]
    assert replayed == timeline and resumed["truncated"] is False

    # Every welcome carries the newest track, with its seq.
    newest = next(e for e in now_playing_events(alice.frames) if e["text"] == "Artist - Second")
    for w in (w1, w2):
        dave = await chat.connect(w, "dave")
        assert dave.welcome["now_playing"] == {**newest["now_playing"], "seq": newest["seq"]}
        assert dave.welcome["now_playing"]["id"] == second["id"]


async def test_a_worker_restarted_mid_stream_misses_no_track_change(chat: Chat, nats: Any) -> None:
    channel = "c" + uuid.uuid4().hex[:8]
    spec = bound_spec(channel)
    worker = await chat.worker(spec)
    alice = await chat.connect(worker, "alice")
    await publish_now_playing(nats.url, channel, "one")
    await alice.expect("event", kind="nowplaying", text="one")

    worker.kill()  # no goodbye: whatever it had not acknowledged is redelivered
    for title in ("two", "three"):
        await publish_now_playing(nats.url, channel, title)
    back = await chat.worker(spec)
    bob = await chat.connect(back, "bob", after=0)
    await bob.expect("resumed")
    # A track change the killed replica had fetched comes back once its ack wait (30 s) is over.
    await consumer_done(nats.url, durable_name(chat.room, channel), timeout=45)
    for title in ("two", "three"):
        await bob.expect("event", kind="nowplaying", text=title, timeout=15)
    assert [e["text"] for e in now_playing_events(bob.frames)] == ["one", "two", "three"]
    carol = await chat.connect(back, "carol")
    assert carol.welcome["now_playing"]["title"] == "three"


async def test_a_new_room_starts_at_the_track_on_air(chat: Chat, nats: Any) -> None:
    """A room bound to a channel that has played for a while stores the current track, not the channel's past."""
    channel = "c" + uuid.uuid4().hex[:8]
    for title in ("old", "older than now", "on air"):
        await publish_now_playing(nats.url, channel, title)
    worker = await chat.worker(bound_spec(channel))
    await consumer_done(nats.url, durable_name(chat.room, channel))
    alice = await chat.connect(worker, "alice", after=0)
    await alice.expect("resumed")
    assert [e["text"] for e in now_playing_events(alice.frames)] == ["on air"]
    assert alice.welcome["now_playing"]["title"] == "on air"


async def test_a_reaction_at_a_position_reaches_every_replica_with_its_position(chat: Chat) -> None:
    channel = "c" + uuid.uuid4().hex[:8]
    spec = bound_spec(channel)
    w1, w2 = await chat.worker(spec), await chat.worker(spec)
    alice, bob = await chat.connect(w1, "alice"), await chat.connect(w2, "bob")
    position = time.time() - 4.25
    # Signals between replicas are core NATS: a reaction sent before w2 subscribed would be lost, so send until
    # bob has one (each send is a new reaction; the test looks at the first bob gets).
    got: dict[str, Any] | None = None
    for _ in range(50):
        await alice.send({"type": "react_at", "emoji": "🎵", "position": position})
        try:
            got = await bob.expect("reaction_at", timeout=0.2)
            break
        except TimeoutError:
            continue
    assert got is not None, "no reaction reached the other replica"
    assert got == {"type": "reaction_at", "user": {"id": "alice", "name": "Alice"}, "emoji": "🎵",
                   "position": position}
    mine = await alice.expect("reaction_at")
    assert mine["position"] == position  # the sender's own sockets hear it too, at the same position
    # Old clients that do not know the frame type keep working: the socket stays open and answers.
    await bob.send({"type": "ping", "ref": "still-here"})
    await bob.expect("pong", ref="still-here")


async def test_a_bad_position_is_refused_and_nothing_is_relayed(chat: Chat) -> None:
    worker = await chat.worker(bound_spec("c" + uuid.uuid4().hex[:8]))
    alice, bob = await chat.connect(worker, "alice"), await chat.connect(worker, "bob")
    await alice.ws.send_str('{"type": "react_at", "emoji": "x", "position": -1}')
    error = await alice.expect("error")
    assert error["code"] == "bad_frame"
    await bob.send({"type": "ping", "ref": "p"})
    await bob.expect("pong", ref="p")
    await asyncio.sleep(0)  # nothing else to wait for: the refused frame was never relayed
    assert not [f for f in bob.frames if f["type"] == "reaction_at"]


async def test_the_shipped_nats_permissions_let_chat_follow_the_channel(
        chat_factory: Callable[..., Chat], postgres: Any, redis: Any, tmp_path: Path) -> None:
    """With examples/nats/authorization.conf, the chat user sets up its consumer on the channel stream and acks,
    and the stream user publishes now-playing."""
    secured = authorized_nats(tmp_path / "secured").start()
    try:
        chat = chat_factory(VEZA_DATABASE_URL=postgres.url, VEZA_REDIS_URL=redis.url, VEZA_NATS_URL=secured.url,
                            VEZA_NATS_USER="veza-chat", VEZA_NATS_PASSWORD=NATS_PASSWORDS["VEZA_NATS_CHAT_PASSWORD"])
        channel = "c" + uuid.uuid4().hex[:8]
        worker = await chat.worker(bound_spec(channel))
        alice = await chat.connect(worker, "alice")
        stream_user = {"user": "veza-stream", "password": NATS_PASSWORDS["VEZA_NATS_STREAM_PASSWORD"]}
        for title in ("first", "second"):
            await publish_now_playing(secured.url, channel, title, **stream_user)
            await alice.expect("event", kind="nowplaying", text=title, timeout=15)
        chat_user = {"user": "veza-chat", "password": NATS_PASSWORDS["VEZA_NATS_CHAT_PASSWORD"]}
        await consumer_done(secured.url, durable_name(chat.room, channel), **chat_user)  # acknowledged
        assert "Authorization Violation" not in "".join(w.log() for w in chat.workers)
    finally:
        secured.stop()
