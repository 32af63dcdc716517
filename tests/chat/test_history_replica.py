"""History and resume through a real streaming replica of the session's PostgreSQL: pages come from the replica
when it is caught up, a sender reads its own message while replication is paused, resume misses nothing, and a
killed replica leaves the primary serving until it is back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest

from tests.support.chat import Chat, ChatWorker, metric
from tests.support.db import StandbyService, fresh_database, standby_of
from tests.support.waiting import wait_for
from veza_chat.store import Op, Store
from veza_local.services import PostgresService

READS = "veza_db_reads_total"


@pytest.fixture(scope="module")
def standby(postgres: PostgresService, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandbyService]:
    with standby_of(postgres, tmp_path_factory.mktemp("chat-replica")) as server:
        yield server


@pytest.fixture
async def chat(chat_factory: Callable[..., Chat], postgres: PostgresService, standby: StandbyService,
               nats: Any) -> Any:
    # No Redis: a resume replays from the store, not from the shared recent-events cache.
    made = chat_factory(VEZA_DATABASE_URL=postgres.url, VEZA_DATABASE_READ_URL=standby.url, VEZA_NATS_URL=nats.url)
    yield made
    await standby.resume_replay()


async def page(chat: Chat, worker: ChatWorker, query: str = "limit=50") -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {chat.token('reader')}"}
    async with aiohttp.ClientSession() as http, http.get(
            f"{worker.url}/chat/{chat.room}/history?{query}", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def send(client: Any, texts: list[str]) -> None:
    for text in texts:
        await client.send({"type": "send", "cid": text, "text": text})
        await client.expect("ack", cid=text)


async def circuit_open(worker: ChatWorker) -> float:
    """veza_circuit_open{name="db-replica"} (the `name` label clashes with `metric`'s own argument)."""
    async with aiohttp.ClientSession() as http, http.get(worker.url + "/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith('veza_circuit_open{name="db-replica"}'):
                return float(line.rpartition(" ")[2])
    return -1.0


def texts(body: dict[str, Any]) -> list[str]:
    return [e["text"] for e in body["events"]]


async def test_history_pages_come_from_the_caught_up_replica(chat: Chat) -> None:
    a = await chat.worker()
    alice = await chat.connect(a, "alice")
    await send(alice, ["one", "two", "three"])

    async def from_replica() -> bool:
        before = await metric(a.url, READS, target="replica", reason="fresh")
        body = await page(chat, a)
        return texts(body) == ["one", "two", "three"] and \
            await metric(a.url, READS, target="replica", reason="fresh") > before

    await wait_for(from_replica, timeout=10, interval=0.1, message="a page served by the replica")
    served = await metric(a.url, READS, target="replica", reason="fresh")
    for _ in range(5):
        body = await page(chat, a, "limit=2")
        assert texts(body) == ["two", "three"] and body["has_more"] and body["last_seq"] == 3
    # Each page: its events, their reactions, the room's last seq.
    assert await metric(a.url, READS, target="replica", reason="fresh") == served + 15


async def test_a_sender_reads_its_message_although_replication_is_paused(chat: Chat,
                                                                         standby: StandbyService) -> None:
    a, b = await chat.worker(), await chat.worker()
    alice = await chat.connect(a, "alice")
    await send(alice, ["old"])
    await standby.pause_replay()
    behind = await metric(a.url, READS, target="primary", reason="behind")
    await send(alice, ["fresh"])
    body = await page(chat, a)  # at once, over REST
    assert texts(body) == ["old", "fresh"] and body["last_seq"] == 2
    assert await metric(a.url, READS, target="primary", reason="behind") > behind
    await alice.send({"type": "history", "ref": "h"})  # and over the socket
    assert [e["text"] for e in (await alice.expect("history", ref="h"))["events"]] == ["old", "fresh"]
    # Another replica of the room learns of the commit from its fan-out (or its poll): the same rule holds there.
    bob = await chat.connect(b, "bob")
    assert bob.welcome["last_seq"] == 2  # B delivered it, so B knows of the commit
    assert texts(await page(chat, b)) == ["old", "fresh"]


async def test_resume_misses_nothing_while_replication_is_paused(chat: Chat, standby: StandbyService) -> None:
    a = await chat.worker()
    alice = await chat.connect(a, "alice")
    await send(alice, ["m0"])
    await standby.pause_replay()
    sent = [f"m{i}" for i in range(1, 21)]
    await send(alice, sent)
    # A worker started now has none of it in memory: the replay reads the store.
    b = await chat.worker()
    late = await chat.connect(b, "late", after=0)
    resumed = await late.expect("resumed")
    assert resumed["last_seq"] == 21 and resumed["truncated"] is False
    assert late.events() == list(range(1, 22))
    assert await metric(b.url, READS, target="replica", reason="fresh") == 0
    # An open socket's resume frame, too.
    on_b = await chat.connect(b, "bob")
    seen = len(on_b.frames)
    await on_b.send({"type": "resume", "after": 5})
    assert (await on_b.expect("resumed"))["truncated"] is False
    assert [f["seq"] for f in on_b.frames[seen:] if f["type"] == "event"] == list(range(6, 22))


async def test_killed_replica_leaves_the_primary_serving_until_it_is_back(chat: Chat,
                                                                          standby: StandbyService) -> None:
    a = await chat.worker()
    alice = await chat.connect(a, "alice")
    await send(alice, ["kept"])
    standby.kill()
    try:
        await send(alice, ["while down"])
        assert texts(await page(chat, a)) == ["kept", "while down"]
        fell_back = sum([await metric(a.url, READS, target="primary", reason=r) for r in ("down", "error")])
        assert fell_back > 0
        assert await circuit_open(a) == 1
    finally:
        standby.start()

    async def back_on_replica() -> bool:
        before = await metric(a.url, READS, target="replica", reason="fresh")
        assert texts(await page(chat, a)) == ["kept", "while down"]
        return await metric(a.url, READS, target="replica", reason="fresh") > before

    await wait_for(back_on_replica, timeout=20, interval=0.2, message="pages served by the replica again")
    assert await circuit_open(a) == 0


async def test_a_short_answer_from_the_replica_is_read_again_from_the_primary(postgres: PostgresService,
                                                                              standby: StandbyService) -> None:
    """The second line of defence of resume: even when the rule lets a read through to a replica that lacks
    events (here, written by a store this one was never told of), a resume never comes back short."""
    url = await fresh_database(postgres, "chatreplica")
    replica = await standby.replica_of(url)
    writer, reader = Store(url, "room"), Store(url, "room", read_url=replica, max_lag=60)
    await writer.open(declare=False)
    await reader.open(declare=False)
    try:
        await standby.caught_up()
        await standby.pause_replay()
        await writer.append([Op("message", "alice", "Alice", f"c{i}", body=f"m{i}") for i in range(5)])
        assert await reader.events_after(0, 100, 5, replica=True) == []  # the replica does not have them
        assert [e["seq"] for e in await reader.events_through(0, 5, 100)] == [1, 2, 3, 4, 5]
        assert [e["seq"] for e in await reader.events_through(0, 5, 2)] == [1, 2]
    finally:
        await standby.resume_replay()
        await writer.close()
        await reader.close()
