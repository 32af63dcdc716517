"""A room's commits on their way to the other replicas (fanout.Fanout against a real nats-server with JetStream):
published back to back without waiting for each ack, and, when JetStream refuses them, published again in order
until it takes them, each stored once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from tests.support.waiting import wait_for
from veza_chat.fanout import BusLink, Fanout
from veza_local.services import NatsService


@pytest.fixture
async def link(nats: NatsService) -> AsyncIterator[BusLink]:
    link = BusLink(nats.url, name="test-fanout")
    link.start()
    yield link
    await link.close()


async def started(link: BusLink) -> Fanout:
    fanout = Fanout(link, platform="test", room="r" + uuid.uuid4().hex[:8], worker_id="0123456789ab",
                    on_events=lambda _: None, on_signal=lambda _: None)
    fanout.start()
    await wait_for(lambda: fanout.js is not None and len(fanout.tasks) == 2, timeout=10,
                   message="the room's stream made and its publisher started")
    return fanout


def commit(first: int, n: int = 3) -> list[tuple[int, str, int | None]]:
    return [(seq, f'{{"type":"event","seq":{seq}}}', 1000 + seq) for seq in range(first, first + n)]


async def stored_first_seqs(fanout: Fanout) -> list[int]:
    """The first event seq of each message in the room's stream, in stream order."""
    assert fanout.js is not None
    info = await fanout.js.stream_info(fanout.stream)
    seqs = []
    for n in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await fanout.js.get_msg(fanout.stream, n)
        assert msg.data is not None
        seqs.append(int(msg.data.decode().split("\n")[1].split(" ")[0]))
    return seqs


async def test_commits_queued_together_are_all_in_flight_before_the_first_ack(link: BusLink) -> None:
    fanout = await started(link)
    try:
        for n in range(10):
            fanout.publish_events(commit(1 + 3 * n))
        await asyncio.sleep(0)  # the publisher's turn: it sends, then waits for acks
        await asyncio.sleep(0)
        in_flight = [item.ack is not None for item in fanout.outbox]
        assert len(in_flight) == 10 and all(in_flight), "every commit sent before any ack was awaited"
        await wait_for(lambda: not fanout.outbox, timeout=10, message="every commit acked")
        assert await stored_first_seqs(fanout) == [1 + 3 * n for n in range(10)], "in order, each once"
    finally:
        await fanout.close()


async def test_refused_publishes_are_retried_in_order_and_stored_once(link: BusLink) -> None:
    fanout = await started(link)
    try:
        assert fanout.js is not None
        await fanout.js.delete_stream(fanout.stream)  # JetStream has nowhere to put them: every publish fails
        for n in range(5):
            fanout.publish_events(commit(1 + 3 * n))
        await asyncio.sleep(1.2)  # failed, waited, failed again
        assert len(fanout.outbox) == 5, "nothing leaves the outbox before JetStream has it"
        await fanout.js.add_stream(name=fanout.stream, subjects=[fanout.events_subject])
        for n in range(5, 8):
            fanout.publish_events(commit(1 + 3 * n))
        await wait_for(lambda: not fanout.outbox, timeout=10, message="the outbox published once the stream is back")
        assert await stored_first_seqs(fanout) == [1 + 3 * n for n in range(8)], "in order, each once"
    finally:
        await fanout.close()
