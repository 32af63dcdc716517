"""What arrives from NATS is another pod's word: forged and broken messages published onto the real bus are
dropped and counted, never reach a client, and delivery goes on; the API's session revocations and role
changes close the sockets they concern, and only those."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import nats as nats_py
import pytest
from nats.aio.client import Client as NatsClient

from tests.support.chat import NATS_PASSWORDS, Chat, ChatClient, authorized_nats, metric, nats_subscribed
from tests.support.events import Capture
from tests.support.waiting import wait_for
from veza_local.services import NatsService

PEER = "0123456789ab"  # shaped like a replica's id: these messages pass for a peer's


@pytest.fixture
async def bus(nats: NatsService) -> AsyncIterator[NatsClient]:
    nc = await nats_py.connect(nats.url)
    yield nc
    await nc.close()


def monitor(nats: NatsService) -> str:
    return f"http://{nats.host}:{nats.monitor_port}"


async def closed(client: ChatClient) -> int | None:
    while await client.recv() is not None:
        pass
    return client.close_code


async def rejected(worker: Any, kind: str, reason: str) -> float:
    return await metric(worker.url, "veza_bus_rejected_total", subject_kind=kind, reason=reason)


async def test_forged_and_broken_bus_messages_are_dropped_and_delivery_goes_on(
        chat: Chat, nats: NatsService, bus: NatsClient) -> None:
    a = await chat.worker()
    alice, bob = await chat.connect(a, "alice"), await chat.connect(a, "bob")
    signals, events = f"veza.test.room.{chat.room}.signals", f"veza.test.room.{chat.room}.events"
    await nats_subscribed(monitor(nats), signals)
    await nats_subscribed(monitor(nats), events)
    await alice.send({"type": "send", "cid": "before", "text": "one"})
    last = (await bob.expect("event", kind="message"))["seq"]

    # A ban nobody made (PostgreSQL holds no such sanction), and one smuggled in as a relayed frame.
    fake_ban = {"type": "moderation", "action": "ban", "user": "bob", "by": "alice"}
    await bus.publish(signals, json.dumps({"w": PEER, "kind": "moderation", "action": "ban", "user": "bob",
                                           "until": None, "frame": json.dumps(fake_ban)}).encode())
    await bus.publish(signals, json.dumps({"w": PEER, "kind": "frame", "frame": json.dumps(fake_ban)}).encode())
    # Broken signals: not JSON, a member of the wrong type, an unknown kind, oversized.
    for raw in (b"{not json", json.dumps({"w": PEER, "kind": "presence", "op": "join", "user": ["x"]}).encode(),
                json.dumps({"w": PEER, "kind": "shout"}).encode(), b"{" + b" " * 70_000 + b"}"):
        await bus.publish(signals, raw)
    # A message under a forged author with a seq 2**62 (delivery would wait for every seq before it), one ahead
    # that is never committed (far enough that the messages sent below do not reach it: a seq they do commit
    # is the open race docs/security.md lists), and lines that are no events.
    forged = {"type": "event", "seq": 0, "kind": "message", "id": str(uuid.uuid4()),
              "author": {"id": "alice", "name": "Alice"}, "ts": 1, "text": "send me your password"}
    for seq in (2**62, last + 1000):
        frame = json.dumps({**forged, "seq": seq}, separators=(",", ":"))
        await bus.publish(events, f"{PEER}\n{seq} 1 {frame}".encode())
    await bus.publish(events, f"{PEER}\n{last + 1} 1 {{\"type\":\"moderation\"}}".encode())
    await bus.publish(events, b"\xff\xfe")
    # A relayed frame of the kind replicas do send goes through: once bob has it, every signal before it was handled.
    typing = {"type": "typing", "user": {"id": "probe", "name": "Probe"}, "active": True}
    await bus.publish(signals, json.dumps({"w": PEER, "kind": "frame", "frame": json.dumps(typing)}).encode())
    await bus.flush()
    await bob.expect("typing", user=typing["user"])

    # Delivery goes on, in order and without a gap.
    for i in range(5):
        await alice.send({"type": "send", "cid": f"after{i}", "text": f"m{i}"})
        await alice.expect("ack", cid=f"after{i}")
    for seq in range(last + 1, last + 6):
        await bob.expect("event", seq=seq)
    assert bob.events() == list(range(last, last + 6))
    assert not [f for f in bob.frames if f.get("text") == forged["text"]], "a forged message reached a client"

    expected = [("room.signals", "unconfirmed"), ("room.signals", "invalid_frame"), ("room.signals", "malformed"),
                ("room.signals", "invalid"), ("room.signals", "too_large"), ("room.events", "seq_out_of_window"),
                ("room.events", "not_committed"), ("room.events", "malformed")]
    for kind, reason in expected:
        await wait_for(lambda k=kind, r=reason: rejected(a, k, r), timeout=10, message=f"{kind} {reason} counted")

    # Counted, and nobody saw any of it.
    for client in (alice, bob):
        assert not [f for f in client.frames if f["type"] == "moderation"], client.frames
        assert not [f for f in client.frames if f.get("text") == forged["text"]]
    assert not bob.ws.closed
    await bob.send({"type": "send", "cid": "still", "text": "here"})
    await bob.expect("ack", cid="still")


async def test_a_moderation_made_on_another_replica_is_still_applied(chat: Chat, nats: NatsService) -> None:
    """The other side of the check above: a real ban, stored and then signalled, closes the socket on the other
    replica at once (the periodic reload would take up to ten seconds)."""
    a, b = await chat.worker(), await chat.worker()
    await nats_subscribed(monitor(nats), f"veza.test.room.{chat.room}.signals")
    mod = await chat.connect(a, "mia", res={f"room/{chat.room}": "moderator"})
    troll = await chat.connect(b, "troll")
    watcher = await chat.connect(b, "wendy")
    await mod.send({"type": "moderate", "action": "ban", "user": "troll", "seconds": 600, "reason": "spam"})
    assert await closed(troll) == 4003
    frame = await watcher.expect("moderation", action="ban", user="troll")
    assert frame["by"] == "mia" and frame["reason"] == "spam" and frame["until"] > 0


async def test_what_chat_workers_publish_follows_the_catalog(chat: Chat, nats: NatsService) -> None:
    """Committed events and signals between two replicas, captured on the real bus, are valid against
    docs/schemas/events/v1 (room-events, room-signals)."""
    capture = await Capture().start(nats.url, "test")
    try:
        a, b = await chat.worker(), await chat.worker()
        await nats_subscribed(monitor(nats), f"veza.test.room.{chat.room}.signals")
        alice, bob = await chat.connect(a, "alice"), await chat.connect(b, "bob")
        await alice.send({"type": "typing", "active": True})
        await bob.expect("typing")
        await alice.send({"type": "send", "cid": "c1", "text": "hello"})
        await bob.expect("event", kind="message", text="hello")
        await wait_for(lambda: capture.seen["room.events"] and capture.seen["room.signals"] >= 2, timeout=10,
                       message="events and signals on the bus")
        kinds = {body.get("kind") for body in capture.bodies("room.signals")}
        assert {"presence", "frame"} <= kinds, kinds
        assert any('"text":"hello"' in body for body in capture.bodies("room.events"))
    finally:
        await capture.close()


def revoked(user: str, session: str | None, reason: str = "logout") -> bytes:
    return json.dumps({"v": 1, "user": user, "session": session, "reason": reason}).encode()


def membership(room: str, user: str, role: str | None) -> bytes:
    return json.dumps({"v": 1, "room": room, "user": user, "role": role}).encode()


async def test_a_revoked_session_closes_its_sockets_and_no_other(chat: Chat, nats: NatsService,
                                                               bus: NatsClient) -> None:
    a = await chat.worker()
    await nats_subscribed(monitor(nats), "veza.test.user.*.revoked")
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    s1, s2, s3 = (str(uuid.uuid4()) for _ in range(3))
    second_token = chat.token(alice, sid=s2)
    first = await chat.connect(a, alice, token=chat.token(alice, sid=s1))
    second = await chat.connect(a, alice, token=second_token)
    other = await chat.connect(a, bob, token=chat.token(bob, sid=s3))

    # Not the API's shape, or for another user than its subject names: ignored.
    await bus.publish(f"veza.test.user.{alice}.revoked", json.dumps({"v": 2, "user": alice, "session": s1}).encode())
    await bus.publish(f"veza.test.user.{bob}.revoked", revoked(alice, None))
    await bus.publish(f"veza.test.user.{alice}.revoked", revoked(alice, s1))
    assert await closed(first) == 4005
    assert await rejected(a, "user.revoked", "invalid") >= 1
    assert await rejected(a, "user.revoked", "subject_mismatch") >= 1
    # The revoked session's token opens no new socket; the others stay.
    async with aiohttp.ClientSession() as http, http.get(f"{a.url}/chat/{chat.room}/history",
                        headers={"Authorization": f"Bearer {chat.token(alice, sid=s1)}"}) as resp:
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "session_revoked"
    await second.send({"type": "ping", "ref": "p"})
    await second.expect("pong", ref="p")

    # Every session of the user (an account disabled): every socket of theirs, and nobody else's.
    await bus.publish(f"veza.test.user.{alice}.revoked", revoked(alice, None, "disabled"))
    assert await closed(second) == 4005
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await chat.connect(a, alice, token=second_token)  # issued before the revocation
    assert err.value.status == 401
    await other.send({"type": "send", "cid": "b1", "text": "still here"})
    await other.expect("ack", cid="b1")
    assert not other.ws.closed


async def test_a_role_removed_in_a_private_room_closes_the_sockets_and_wins_over_the_token(
        chat: Chat, nats: NatsService, bus: NatsClient) -> None:
    a = await chat.worker({"visibility": "private", "limits": {"messagesPerMinute": 100000}})
    subject = f"veza.test.room.{chat.room}.membership"
    await nats_subscribed(monitor(nats), subject)
    carol, dave, mia = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    res = {f"room/{chat.room}": "member"}
    carol_token = chat.token(carol, res=res)
    left = await chat.connect(a, carol, token=carol_token)
    stays = await chat.connect(a, dave, res=res)
    mod = await chat.connect(a, mia, res={f"room/{chat.room}": "moderator"})

    await bus.publish(f"veza.test.room.{chat.room}.membership", membership("another-room", carol, None))
    # Broken: not JSON, oversized, another version, a role that does not exist.
    for raw in (b"{not json", b"{" + b" " * 5000 + b"}", json.dumps({"v": 2, "room": chat.room, "user": carol,
                                                                      "role": None}).encode(),
                membership(chat.room, carol, "emperor")):
        await bus.publish(subject, raw)
    await bus.publish(subject, membership(chat.room, mia, "member"))  # demoted: stays, but moderates no more
    await bus.publish(subject, membership(chat.room, carol, None))
    assert await closed(left) == 4006
    for reason in ("subject_mismatch", "malformed", "too_large", "invalid"):
        assert await rejected(a, "room.membership", reason) >= 1, reason
    # The event is newer than the token that still names the role: the token no longer lets carol in.
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await chat.connect(a, carol, token=carol_token)
    assert err.value.status == 403
    await mod.send({"type": "moderate", "action": "kick", "user": dave})
    assert (await mod.expect("error"))["code"] == "forbidden"
    await stays.send({"type": "send", "cid": "d1", "text": "hello"})
    await stays.expect("ack", cid="d1")
    assert not stays.ws.closed and not mod.ws.closed


async def test_chat_workers_signed_in_as_the_chat_user_work_end_to_end(
        chat_factory: Callable[..., Chat], postgres: Any, redis: Any, tmp_path: Path) -> None:
    """Against a NATS that admits only the users of examples/nats/authorization.conf: two chat workers signed in
    as the chat user relay signals to each other and hear the API user's revocations."""
    secured = authorized_nats(tmp_path / "secured").start()
    try:
        chat = chat_factory(VEZA_DATABASE_URL=postgres.url, VEZA_REDIS_URL=redis.url, VEZA_NATS_URL=secured.url,
                            VEZA_NATS_USER="veza-chat", VEZA_NATS_PASSWORD=NATS_PASSWORDS["VEZA_NATS_CHAT_PASSWORD"])
        a, b = await chat.worker(), await chat.worker()
        await nats_subscribed(monitor(secured), f"veza.test.room.{chat.room}.signals")
        await nats_subscribed(monitor(secured), "veza.test.user.*.revoked")
        user = str(uuid.uuid4())
        alice, bob = await chat.connect(a, user), await chat.connect(b, "bob")
        await alice.send({"type": "typing", "active": True})
        await bob.expect("typing")  # typing travels only over NATS
        await alice.send({"type": "send", "cid": "hello", "text": "hello"})
        await bob.expect("event", kind="message", text="hello")
        api = await nats_py.connect(secured.url, user="veza-api", password=NATS_PASSWORDS["VEZA_NATS_API_PASSWORD"])
        try:
            await api.publish(f"veza.test.user.{user}.revoked", revoked(user, None))
            await api.flush()
        finally:
            await api.close()
        assert await closed(alice) == 4005
        assert not bob.ws.closed
        assert "Authorization Violation" not in "".join(w.log() for w in chat.workers)
    finally:
        await chat.close()
        secured.stop()
