"""Failures: a worker killed mid-stream, Redis stopped, NATS restarted, PostgreSQL down, SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.support.chat import Chat, ChatClient, ChatWorker
from tests.support.waiting import wait_for
from veza_local.services import LocalService, NatsService, PostgresService, RedisService, free_port

pytestmark = pytest.mark.slow


async def drain(client: ChatClient) -> None:
    """Read until the socket closes."""
    with contextlib.suppress(Exception):
        while await client.recv(timeout=5) is not None:
            pass


async def read_until_seq(client: ChatClient, seq: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not client.events() or max(client.events()) < seq:
        assert time.monotonic() < deadline, f"reached {client.events()[-3:]} not {seq}"
        assert await client.recv(timeout=deadline - time.monotonic()) is not None


def acks(client: ChatClient) -> dict[str, int]:
    return {f["cid"]: f["seq"] for f in client.frames if f["type"] == "ack"}


def workers_connected(nats: NatsService, room: str) -> int:
    """The room's workers connected to this NATS server (its monitoring endpoint names the clients)."""
    try:
        with urllib.request.urlopen(f"http://{nats.host}:{nats.monitor_port}/connz?limit=1000", timeout=1) as resp:
            connections = json.load(resp)["connections"]
    except OSError:
        return 0
    return sum(1 for c in connections if c.get("name", "").startswith(f"veza-chat-{room}-"))


async def test_kill_9_during_a_stream_then_resume_on_the_other_worker(chat: Chat, postgres: Any) -> None:
    a, b = await chat.worker(), await chat.worker()
    sender = await chat.connect(a, "sender")
    reader = await chat.connect(a, "reader")
    watcher = await chat.connect(b, "watcher")
    first = [f"c{i}" for i in range(200)]
    for cid in first:
        await sender.send({"type": "send", "cid": cid, "text": cid})
    while len(acks(sender)) < 40:
        assert await sender.recv() is not None
    a.kill()
    await asyncio.gather(drain(sender), drain(reader))
    acked_before = acks(sender)
    assert acked_before, "some sends were acknowledged before the crash"
    seen = reader.events()
    assert seen == list(range(1, len(seen) + 1))

    # The reader resumes on B from its last seq; the sender retries everything unacked (same cids).
    reader2 = await chat.connect(b, "reader", after=seen[-1] if seen else 0)
    sender2 = await chat.connect(b, "sender")
    second = [f"d{i}" for i in range(100)]
    for cid in [c for c in first if c not in acked_before] + second:
        await sender2.send({"type": "send", "cid": cid, "text": cid})
    while len(acks(sender2)) < len(first) - len(acked_before) + len(second):
        assert await sender2.recv() is not None
    all_acks = {**acked_before, **acks(sender2)}
    top = max(all_acks.values())
    assert sorted(all_acks.values()) == list(range(1, top + 1)), "one seq per cid, gapless"
    await read_until_seq(reader2, top)
    assert await reader2.expect("resumed")
    combined = seen + reader2.events()
    assert combined == list(range(1, top + 1)), "nothing lost, nothing duplicated, in order"
    texts = [f["text"] for f in reader.frames + reader2.frames if f["type"] == "event"]
    assert sorted(texts) == sorted(first + second)
    await read_until_seq(watcher, top)
    assert watcher.events() == list(range(1, top + 1))
    conn = await asyncpg.connect(postgres.url)
    try:
        rows = await conn.fetch("SELECT client_msg_id FROM chat_events WHERE room = $1", chat.room)
    finally:
        await conn.close()
    assert sorted(r[0] for r in rows) == sorted(first + second)


async def test_resume_frame_and_resume_after_a_long_absence(chat: Chat) -> None:
    a, b = await chat.worker(), await chat.worker()
    alice = await chat.connect(a, "alice")
    for i in range(30):
        await alice.send({"type": "send", "cid": f"m{i}", "text": str(i)})
    while len(acks(alice)) < 30:
        await alice.recv()
    # A fresh worker has an empty L1: the range comes from the L2 cache or PostgreSQL.
    c = await chat.worker()
    late = await chat.connect(c, "bob", after=5)
    await late.expect("resumed", last_seq=30)
    assert late.events() == list(range(6, 31))
    await alice.send({"type": "send", "cid": "live", "text": "live"})
    await late.expect("event", seq=31)
    # The resume frame re-syncs an open socket.
    bob = await chat.connect(b, "bob")
    await bob.send({"type": "resume", "after": 28})
    resumed = await bob.expect("resumed")
    assert resumed["after"] == 28 and resumed["truncated"] is False
    idx = bob.frames.index(resumed)
    assert [f["seq"] for f in bob.frames[:idx] if f["type"] == "event"][-3:] == [29, 30, 31]


async def test_redis_stopped_mid_test_sends_still_work_and_recover(
        chat_factory: Callable[..., Chat], service_factory: Callable[[type[LocalService]], LocalService],
        postgres: PostgresService, nats: NatsService) -> None:
    r = service_factory(RedisService)
    chat = chat_factory(VEZA_DATABASE_URL=postgres.url, VEZA_NATS_URL=nats.url, VEZA_REDIS_URL=r.url)
    a, b = await chat.worker(), await chat.worker()
    alice, bob = await chat.connect(a, "alice"), await chat.connect(b, "bob")
    await alice.send({"type": "send", "cid": "before", "text": "x"})
    await alice.expect("ack", cid="before")
    r.kill()
    for i in range(5):
        await alice.send({"type": "send", "cid": f"down{i}", "text": "y"})
        await alice.expect("ack", cid=f"down{i}")
    await bob.expect("event", seq=6)
    carol = await chat.connect(b, "carol")  # joining works: presence falls back to local + NATS signals
    await carol.send({"type": "presence", "ref": "p"})
    listed = await carol.expect("presence", op="list")
    assert {"alice", "bob", "carol"} <= {u["id"] for u in listed["users"]}
    r.start()
    client = aioredis.from_url(r.url)
    sent = itertools.count()

    async def limits_back_in_redis() -> bool:
        """Sends keep working; once a breaker's reset_after has passed, its probe finds Redis again."""
        cid = f"up{next(sent)}"
        await alice.send({"type": "send", "cid": cid, "text": "z"})
        await alice.expect("ack", cid=cid)
        keys = [k.decode() for k in await client.keys(f"veza:test:chat:{chat.room}:*")]
        return any(k.endswith(":rl:user:alice") for k in keys)

    try:
        await wait_for(limits_back_in_redis, timeout=15, interval=0.25, message="rate limits back in Redis")
    finally:
        await client.aclose()


async def test_nats_restarted_no_loss(
        chat_factory: Callable[..., Chat], service_factory: Callable[[type[LocalService]], LocalService],
        postgres: PostgresService, redis: RedisService) -> None:
    n = service_factory(NatsService)
    assert isinstance(n, NatsService)
    chat = chat_factory(VEZA_DATABASE_URL=postgres.url, VEZA_NATS_URL=n.url, VEZA_REDIS_URL=redis.url)
    a, b = await chat.worker(), await chat.worker()
    alice, bob = await chat.connect(a, "alice"), await chat.connect(b, "bob")
    total = 0
    for phase in ("before", "down", "after"):
        if phase == "down":
            n.stop()
        if phase == "after":
            n.start()
            await wait_for(lambda: workers_connected(n, chat.room) == 2, timeout=15,
                           message="both workers reconnected to NATS")
        for i in range(20):
            await alice.send({"type": "send", "cid": f"{phase}{i}", "text": phase})
        while len(acks(alice)) < total + 20:
            assert await alice.recv() is not None
        total += 20
        await read_until_seq(bob, total)
    assert bob.events() == list(range(1, total + 1))


async def test_postgres_down_sends_refused_never_acked_then_recover(
        chat_factory: Callable[..., Chat], service_factory: Callable[[type[LocalService]], LocalService],
        nats: NatsService, redis: RedisService) -> None:
    pg = service_factory(PostgresService)
    chat = chat_factory(VEZA_DATABASE_URL=pg.url, VEZA_NATS_URL=nats.url, VEZA_REDIS_URL=redis.url)
    a = await chat.worker()
    alice = await chat.connect(a, "alice")
    await alice.send({"type": "send", "cid": "ok", "text": "x"})
    await alice.expect("ack", cid="ok")
    pg.stop()
    await alice.send({"type": "send", "cid": "lost", "text": "y"})
    error = await alice.expect("error", cid="lost")
    assert error["code"] == "store_unavailable"
    assert "lost" not in acks(alice)
    pg.start()

    async def retried_and_acked() -> dict[str, Any] | None:
        """The client's retry with the same cid: refused while the store reconnects, then acked."""
        await alice.send({"type": "send", "cid": "lost", "text": "y"})
        while True:
            f = await alice.recv()
            assert f is not None
            if f.get("cid") == "lost" and f["type"] in ("ack", "error"):
                return f if f["type"] == "ack" else None

    ack = await wait_for(retried_and_acked, timeout=20, interval=0.5, message="the retried send acked")
    assert ack["seq"] == 2


async def test_a_worker_yet_to_reach_its_database_answers_its_room_503_not_ready(
        chat_factory: Callable[..., Chat], nats: NatsService, redis: RedisService) -> None:
    """A restarted worker listens before it has reached PostgreSQL: its room is 503 `not_ready` (retry) meanwhile,
    never 404, which a client takes for a room that does not exist; another room is 404."""
    chat = chat_factory(VEZA_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/veza",
                        VEZA_NATS_URL=nats.url, VEZA_REDIS_URL=redis.url)
    worker = ChatWorker(chat.env(), chat.tmp / "booting.log").start()
    chat.workers.append(worker)
    async with aiohttp.ClientSession() as http:

        async def answer(room: str) -> tuple[int, str] | None:
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with http.get(f"{worker.url}/chat/{room}/history") as resp:
                    return resp.status, (await resp.json())["error"]["code"]
            return None

        assert await wait_for(lambda: answer(chat.room), timeout=30, message="the worker listening") \
            == (503, "not_ready"), worker.log()
        assert await answer("elsewhere") == (404, "room_not_found")
        assert "database not reachable yet, retrying" in worker.log()
        assert await answer(chat.room) == (503, "not_ready")


async def test_sigterm_closes_with_1012_after_acking_in_flight_sends(chat: Chat) -> None:
    a = await chat.worker()
    alice = await chat.connect(a, "alice")
    for i in range(50):
        await alice.send({"type": "send", "cid": f"m{i}", "text": "x"})
    started = time.monotonic()
    a.terminate()
    await drain(alice)
    assert alice.close_code == 1012
    assert a.proc is not None and a.proc.wait(10) == 0
    assert time.monotonic() - started < 5 + 2, "exits within the grace period"
    got = acks(alice)
    errors = [f for f in alice.frames if f["type"] == "error"]
    assert len(got) + len(errors) == 50 and all(e["code"] == "shutting_down" for e in errors)
    b = await chat.worker()
    bob = await chat.connect(b, "bob", after=0)
    await bob.expect("resumed")
    assert bob.events() == sorted(got.values()) == list(range(1, len(got) + 1))
