"""What other parts rely on: member counts in Redis for the API, the purge Job, the spec's field names, a listen
queue that holds a reconnect storm."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

from tests.support.chat import Chat
from tests.support.process import connected_within
from tests.support.waiting import wait_for
from veza_chat.settings import ChatSettings
from veza_chat.spec import RoomSpec
from veza_core.specs import ChatRoomSpec


async def test_members_hash_is_what_the_api_counts(chat: Chat, redis: Any) -> None:
    worker = await chat.worker()
    client = aioredis.from_url(redis.url)
    key = f"veza:test:room:{chat.room}:members"
    try:
        alice = await chat.connect(worker, "alice")
        bob = await chat.connect(worker, "bob")
        assert await client.hlen(key) == 2
        await bob.close()

        async def bob_left() -> bool:
            return await client.hlen(key) == 1

        await wait_for(bob_left, timeout=10, message="bob gone from the members hash")
        assert await client.hget(key, "alice") == b"Alice"
        assert await client.ttl(key) > 0, "the hash expires if every worker dies"
        await alice.close()
    finally:
        await client.aclose()


async def test_workers_declare_their_room_in_the_directory(chat: Chat, postgres: Any) -> None:
    await chat.worker({"title": "Team room", "visibility": "private",
                       "members": [{"user": "alice", "role": "owner"}]})
    conn = await asyncpg.connect(postgres.url)
    try:
        row = await conn.fetchrow("SELECT title, visibility FROM rooms WHERE name = $1", chat.room)
        assert row is not None and (row["title"], row["visibility"]) == ("Team room", "private")
    finally:
        await conn.close()


async def test_purge_deletes_the_room_history_and_nothing_else(chat: Chat, postgres: Any) -> None:
    worker = await chat.worker()
    alice = await chat.connect(worker, "alice")
    for i in range(3):
        await alice.send({"type": "send", "cid": f"c{i}", "text": f"m{i}"})
        await alice.expect("ack", cid=f"c{i}")
    await alice.close()
    conn = await asyncpg.connect(postgres.url)
    try:
        await conn.execute("INSERT INTO chat_events (room, seq, kind, author, author_name, client_msg_id, body)"
                           " VALUES ('other-room', 1, 'message', 'x', 'X', 'k', 'stays')")
        assert await conn.fetchval("SELECT count(*) FROM chat_events WHERE room = $1", chat.room) == 3
        result = subprocess.run([sys.executable, "-m", "veza_cli.main", "chat", "--purge"],
                                env={**os.environ, **chat.env()}, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert await conn.fetchval("SELECT count(*) FROM chat_events WHERE room = $1", chat.room) == 0
        assert await conn.fetchval("SELECT count(*) FROM chat_rooms WHERE room = $1", chat.room) == 0
        assert await conn.fetchval("SELECT count(*) FROM rooms WHERE name = $1", chat.room) == 0
        assert await conn.fetchval("SELECT body FROM chat_events WHERE room = 'other-room'") == "stays"
    finally:
        await conn.execute("DELETE FROM chat_events WHERE room = 'other-room'")
        await conn.close()


def _aliases(model: type[BaseModel], prefix: str = "") -> set[str]:
    found = set()
    for name, field in model.model_fields.items():
        path = prefix + (field.alias or name)
        found.add(path)
        sub = field.annotation
        for candidate in (sub, *getattr(sub, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                found |= _aliases(candidate, path + ".")
            for inner in getattr(candidate, "__args__", ()):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    found |= _aliases(inner, path + "[].")
    return found


def test_the_worker_reads_only_fields_the_crd_defines() -> None:
    """The worker parses a lenient view of the ChatRoom spec; its names must stay the CRD's."""
    worker = {a.replace("[].", ".") for a in _aliases(RoomSpec)}
    crd = {a.replace("[].", ".") for a in _aliases(ChatRoomSpec)}
    assert worker <= crd, worker - crd


async def test_a_reconnect_storm_waits_in_the_listen_queue(chat: Chat) -> None:
    """The worker listens with a deep backlog (VEZA_CHAT_LISTEN_BACKLOG, 4096): the clients of a restarted replica
    all reconnect at once, and past aiohttp's default of 128 the kernel drops their SYNs, each sent again only 1,
    3, 7... s later. With the worker stopped (SIGSTOP, so it accepts nothing) the kernel completes one more
    handshake than the backlog and drops the rest."""
    deep = await chat.worker()
    set_to_300 = await chat.worker(VEZA_CHAT_LISTEN_BACKLOG="300")
    for worker, attempts, queued in ((deep, 600, 600), (set_to_300, 400, 301)):
        assert worker.proc is not None
        os.kill(worker.proc.pid, signal.SIGSTOP)
        try:
            # 0.5 s: within the first SYN retransmission (1 s), so a dropped SYN does not get in late.
            assert await asyncio.to_thread(connected_within, worker.port, attempts, 0.5) == queued
        finally:
            os.kill(worker.proc.pid, signal.SIGCONT)


def test_a_listen_backlog_out_of_range_is_refused() -> None:
    assert ChatSettings.from_env({"VEZA_CHAT_LISTEN_BACKLOG": "512"}).chat_listen_backlog == 512
    with pytest.raises(ValueError, match="chat_listen_backlog"):
        ChatSettings.from_env({"VEZA_CHAT_LISTEN_BACKLOG": "0"})
