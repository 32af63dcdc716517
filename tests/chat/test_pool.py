"""Pool workers (`veza chat --pool`): many rooms in one process, opened on first use from the directory, released
when idle or moved, and resumed gaplessly elsewhere when a pool worker dies.

The directory rows are written as the API writes them on the operator's `PUT /api/v1/admin/rooms/{name}`
(tests/api/test_directory.py tests that route), and the API's `room.lifecycle` event is published as it does.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import asyncpg
import nats
import pytest

from tests.support.chat import FAST_SPEC, Chat, ChatClient, SteadySender, metric, moved_under_load
from tests.support.waiting import wait_for
from veza_core import events
from veza_core.db import migrate

CLOSE_SERVICE_RESTART = 1012


async def declare(database_url: str, room: str, *, spec: dict[str, Any] | None = None,
                  placement: str = "pooled") -> None:
    """The room's directory row, as the API stores the operator's declaration."""
    await migrate(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO rooms (name, title, visibility, spec, placement) VALUES ($1, $1, 'public', $2::jsonb, $3)"
            " ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, placement = excluded.placement",
            room, json.dumps(spec if spec is not None else FAST_SPEC), placement)
    finally:
        await conn.close()


async def announce(nats_url: str, room: str, action: str = "updated") -> None:
    """The API's lifecycle event after a directory change."""
    event = events.RoomLifecycle(v=1, id=events.new_id(), action=action, title=None if action == "deleted" else room,
                                 visibility=None if action == "deleted" else "public", at=time.time(), room=room)
    nc = await nats.connect(nats_url)
    try:
        await nc.publish(events.ROOM_LIFECYCLE.subject("test", room), events.payload(event))
        await nc.flush()
    finally:
        await nc.close()


async def connect(chat: Chat, worker: Any, room: str, user: str = "alice", after: int | None = None) -> ChatClient:
    """A client of `room` (not necessarily the Chat's own) on `worker`."""
    saved, chat.room = chat.room, room
    try:
        return await chat.connect(worker, user, after=after)
    finally:
        chat.room = saved


async def send(client: ChatClient, text: str) -> int:
    cid = uuid.uuid4().hex
    await client.send({"type": "send", "cid": cid, "text": text})
    ack = await client.expect("ack", cid=cid)
    return int(ack["seq"])


async def close_code(client: ChatClient, timeout: float = 10.0) -> int | None:
    """Read until the server closes the socket; the code of its close frame."""
    deadline = time.monotonic() + timeout
    while await client.recv(max(0.1, deadline - time.monotonic())) is not None:
        pass
    return client.close_frame_code


async def status_of(url: str, token: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status, await resp.json()


@pytest.fixture
def services(postgres: Any, nats: Any, redis: Any) -> dict[str, str]:
    return {"VEZA_DATABASE_URL": postgres.url, "VEZA_NATS_URL": nats.url, "VEZA_REDIS_URL": redis.url}


async def test_one_pool_worker_serves_many_rooms_apart(chat_factory: Callable[..., Chat],
                                                       services: dict[str, str]) -> None:
    chat = chat_factory(**services)
    rooms = [f"p{uuid.uuid4().hex[:8]}-{i}" for i in range(3)]
    for room in rooms:
        await declare(services["VEZA_DATABASE_URL"], room)
    pool = await chat.pool_worker()
    assert await metric(pool.url, "veza_chat_rooms") == 0  # nothing opens before it is asked for

    clients = {room: (await connect(chat, pool, room, "alice"), await connect(chat, pool, room, "bob"))
               for room in rooms}
    assert await metric(pool.url, "veza_chat_rooms") == 3
    for room, (alice, _) in clients.items():
        assert await send(alice, f"hello {room}") == 1  # each room has its own sequence
    for room, (_, bob) in clients.items():
        event = await bob.expect("event", seq=1)
        assert event["text"] == f"hello {room}"
    await asyncio.sleep(0.5)
    for room, (_, bob) in clients.items():  # nothing of another room reached anyone
        assert [f["text"] for f in bob.frames if f["type"] == "event"] == [f"hello {room}"]
        status, page = await status_of(f"{pool.url}/chat/{room}/history", chat.token('bob'))
        assert status == 200 and [e["text"] for e in page["events"]] == [f"hello {room}"]


async def test_unknown_and_dedicated_rooms_are_refused(chat_factory: Callable[..., Chat],
                                                       services: dict[str, str]) -> None:
    chat = chat_factory(**services)
    dedicated = f"d{uuid.uuid4().hex[:8]}"
    await declare(services["VEZA_DATABASE_URL"], dedicated, placement="dedicated")
    pool = await chat.pool_worker()
    token = chat.token("alice")
    status, body = await status_of(f"{pool.url}/chat/nowhere-{uuid.uuid4().hex[:6]}/history", token)
    assert (status, body["error"]["code"]) == (404, "room_not_found")
    status, body = await status_of(f"{pool.url}/chat/{dedicated}/history", token)
    assert (status, body["error"]["code"]) == (503, "room_moved")
    assert await metric(pool.url, "veza_chat_rooms") == 0
    # A request without a valid token opens nothing: it is refused before the room is looked up.
    pooled = f"p{uuid.uuid4().hex[:8]}"
    await declare(services["VEZA_DATABASE_URL"], pooled)
    for bad in ("not-a-token", chat.token("alice", audience="veza-api")):
        status, body = await status_of(f"{pool.url}/chat/{pooled}/history", bad)
        assert status == 401, body
    assert await metric(pool.url, "veza_chat_rooms") == 0


async def test_rooms_fan_out_across_pool_replicas(chat_factory: Callable[..., Chat],
                                                  services: dict[str, str]) -> None:
    chat = chat_factory(**services)
    room = f"p{uuid.uuid4().hex[:8]}"
    await declare(services["VEZA_DATABASE_URL"], room)
    one, two = await chat.pool_worker(), await chat.pool_worker()
    alice, bob = await connect(chat, one, room, "alice"), await connect(chat, two, room, "bob")
    seqs = [await send(alice, f"m{i}") for i in range(20)]
    assert seqs == list(range(1, 21))
    for seq in seqs:
        await bob.expect("event", seq=seq)
    assert bob.events() == seqs


async def test_a_moved_room_is_released_with_1012_and_refused(chat_factory: Callable[..., Chat],
                                                              services: dict[str, str]) -> None:
    chat = chat_factory(**services)
    room = f"p{uuid.uuid4().hex[:8]}"
    await declare(services["VEZA_DATABASE_URL"], room)
    pool = await chat.pool_worker()
    alice = await connect(chat, pool, room, "alice")
    last = await send(alice, "before the move")
    # The operator promoted the room: its own workers serve it (here: a dedicated worker of the same room).
    await declare(services["VEZA_DATABASE_URL"], room, placement="dedicated")
    await announce(services["VEZA_NATS_URL"], room)
    assert await close_code(alice) == CLOSE_SERVICE_RESTART
    assert await metric(pool.url, "veza_chat_rooms_released_total", reason="moved") == 1
    status, body = await status_of(f"{pool.url}/chat/{room}/history", chat.token('alice'))
    assert (status, body["error"]["code"]) == (503, "room_moved")
    chat.room = room  # the dedicated worker of the same room takes over where the pool left off
    dedicated = await chat.worker()
    again = await chat.connect(dedicated, "alice", after=last - 1)
    assert (await again.expect("event", seq=last))["text"] == "before the move"
    assert await send(again, "after the move") == last + 1


async def test_a_changed_spec_reopens_the_room(chat_factory: Callable[..., Chat], services: dict[str, str]) -> None:
    chat = chat_factory(**services)
    room = f"p{uuid.uuid4().hex[:8]}"
    await declare(services["VEZA_DATABASE_URL"], room)
    pool = await chat.pool_worker()
    alice = await connect(chat, pool, room, "alice")
    await declare(services["VEZA_DATABASE_URL"], room, spec={"limits": {"maxMessageBytes": 100}})
    await announce(services["VEZA_NATS_URL"], room)
    assert await close_code(alice) == CLOSE_SERVICE_RESTART
    again = await connect(chat, pool, room, "alice")
    assert again.welcome["room"]["limits"]["max_message_bytes"] == 100  # the new spec serves the reconnect
    unchanged = f"p{uuid.uuid4().hex[:8]}"  # a lifecycle event that changes nothing keeps the sockets
    await declare(services["VEZA_DATABASE_URL"], unchanged)
    bob = await connect(chat, pool, unchanged, "bob")
    await announce(services["VEZA_NATS_URL"], unchanged)
    await asyncio.sleep(1.0)
    assert not bob.ws.closed and await send(bob, "still here") == 1


async def test_an_idle_room_is_released_and_reopens_where_it_stood(chat_factory: Callable[..., Chat],
                                                                   services: dict[str, str]) -> None:
    chat = chat_factory(**services)
    room = f"p{uuid.uuid4().hex[:8]}"
    await declare(services["VEZA_DATABASE_URL"], room)
    pool = await chat.pool_worker(VEZA_CHAT_POOL_IDLE_SECONDS="1")
    alice = await connect(chat, pool, room, "alice")
    for i in range(3):
        await send(alice, f"m{i}")
    await alice.close()

    async def released() -> bool:
        return await metric(pool.url, "veza_chat_rooms") == 0

    await wait_for(released, timeout=15, message="the idle room released")
    assert await metric(pool.url, "veza_chat_rooms_released_total", reason="idle") == 1
    bob = await connect(chat, pool, room, "bob", after=0)
    assert [(await bob.expect("event", seq=s))["text"] for s in (1, 2, 3)] == ["m0", "m1", "m2"]
    assert await send(bob, "m3") == 4


async def test_kill_9_of_a_pool_worker_with_100_rooms(chat_factory: Callable[..., Chat],
                                                      services: dict[str, str]) -> None:
    """Every client of the killed worker reconnects to the other one with `after` = the last seq it saw, and gets
    every message sent meanwhile, once, in order."""
    chat = chat_factory(**services)
    rooms = [f"k{uuid.uuid4().hex[:6]}-{i}" for i in range(100)]
    for room in rooms:
        await declare(services["VEZA_DATABASE_URL"], room)
    doomed, survivor = await chat.pool_worker(), await chat.pool_worker()
    victims = await asyncio.gather(*(connect(chat, doomed, room, "alice") for room in rooms))
    senders = await asyncio.gather(*(connect(chat, survivor, room, "bob") for room in rooms))
    assert await metric(doomed.url, "veza_chat_rooms") == 100
    await asyncio.gather(*(send(s, "before") for s in senders))
    await asyncio.gather(*(v.expect("event", seq=1) for v in victims))
    seen = {room: max(v.events()) for room, v in zip(rooms, victims, strict=True)}

    doomed.kill()
    await asyncio.gather(*(send(s, "while down") for s in senders))  # sent while those clients are away
    resumed = await asyncio.gather(*(connect(chat, survivor, room, "alice", after=seen[room]) for room in rooms))
    await asyncio.gather(*(send(s, "after") for s in senders))
    for room, client in zip(rooms, resumed, strict=True):
        await client.expect("event", seq=3)
        assert client.events() == [2, 3], room  # gapless from where it stood, nothing twice
        assert [f["text"] for f in client.frames if f["type"] == "event"] == ["while down", "after"]


async def test_promotion_and_demotion_under_steady_sends(chat_factory: Callable[..., Chat],
                                                         services: dict[str, str]) -> None:
    """Clients on both pool replicas keep sending while the room moves to its own worker and back."""
    chat = chat_factory(**services)
    room = f"m{uuid.uuid4().hex[:8]}"
    chat.room = room
    await declare(services["VEZA_DATABASE_URL"], room)
    pools = [await chat.pool_worker(), await chat.pool_worker()]
    dedicated = await chat.worker()
    # Where the front door sends each client: its pool replica while pooled, the dedicated worker once promoted.
    routes = {"pooled": True}

    def route(i: int) -> Any:
        return pools[i % 2] if routes["pooled"] else dedicated

    senders = [SteadySender(f"user{i}", lambda after, i=i: connect(chat, route(i), room, f"user{i}", after=after))
               for i in range(4)]

    async def promote() -> None:  # the operator's order: route switched, then the directory says where the room is
        routes["pooled"] = False
        await declare(services["VEZA_DATABASE_URL"], room, placement="dedicated")
        await announce(services["VEZA_NATS_URL"], room)

    await moved_under_load(services["VEZA_DATABASE_URL"], room, senders, promote)
    codes = [code for s in senders for code in s.close_codes]
    assert all(code == CLOSE_SERVICE_RESTART for code in codes), codes
    for pool in pools:  # each pool replica let go of the room because it moved
        assert await metric(pool.url, "veza_chat_rooms_released_total", reason="moved") == 1
    assert {code for s in senders for code in s.refusals} <= {"shutting_down"}

    async def demote() -> None:  # back: pooled in the directory, route switched, the dedicated worker stops
        await declare(services["VEZA_DATABASE_URL"], room)
        routes["pooled"] = True
        dedicated.terminate()

    for s in senders:  # the same clients go on (their cids go on counting: a cid is never reused)
        s.stop.clear()
        s.reconnects = 0
    await moved_under_load(services["VEZA_DATABASE_URL"], room, senders, demote)
