"""The per-replica sequencer alone (room.Room): order, exactly once, gap fills racing fan-out,
and the commit-to-delivery delay read on the room's clock."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import REGISTRY

from tests.support.waiting import wait_for
from veza_chat.room import Encoded, Room, encode


def event(seq: int, ts: int = 0) -> dict[str, Any]:
    return {"seq": seq, "kind": "message", "id": str(seq), "author": {"id": "a"}, "ts": ts, "text": str(seq)}


def ev(seq: int) -> Encoded:
    return encode(event(seq))


def delivered(room: Room) -> list[int]:
    return [seq for seq, _ in room.l1]


async def test_out_of_order_events_are_delivered_in_order_once() -> None:
    async def fetch(after: int, upto: int, limit: int) -> list[dict[str, Any]]:
        raise AssertionError("no gap should need PostgreSQL")

    room = Room("r", fetch)
    room.feed([ev(2), ev(3)])
    assert delivered(room) == []
    room.feed([ev(1), ev(2)])
    room.feed([ev(3), ev(1)])
    assert delivered(room) == [1, 2, 3] and room.delivered == 3 and not room.pending
    await room.stop()


async def test_gap_fill_racing_fan_out_never_rewinds() -> None:
    fetching, answer = asyncio.Event(), asyncio.Event()

    async def slow_fetch(after: int, upto: int, limit: int) -> list[dict[str, Any]]:
        fetching.set()
        await answer.wait()  # the query is still running while fan-out delivers
        return [event(s) for s in range(after + 1, upto + 1)][:limit]

    room = Room("r", slow_fetch)
    room.feed([ev(4), ev(5)])  # 1..3 missing: a fill starts after the grace period
    await fetching.wait()
    room.feed([ev(1), ev(2), ev(3), ev(6)])  # fan-out brings them while the query runs
    assert delivered(room) == [1, 2, 3, 4, 5, 6]
    answer.set()
    assert room.gap_task is not None
    await room.gap_task
    assert delivered(room) == [1, 2, 3, 4, 5, 6] and room.delivered == 6 and not room.pending
    await room.stop()


async def test_each_gap_waits_its_own_grace_for_fan_out() -> None:
    """In a room written on two replicas a new gap opens at nearly every commit of the other one, its events on
    their way over NATS: a gap is filled from PostgreSQL only once it has itself lasted the grace, however long
    the room has had one gap after another."""
    fetched: list[tuple[int, int]] = []

    async def fetch(after: int, upto: int, limit: int) -> list[dict[str, Any]]:
        fetched.append((after, upto))
        return [event(s) for s in range(after + 1, upto + 1)]

    room = Room("r", fetch, gap_wait=1.0)
    room.feed([ev(2)])  # 1 missing
    await asyncio.sleep(0.6)
    room.feed([ev(1), ev(4)])  # fan-out brings 1; 3 is missing now
    await asyncio.sleep(0.6)  # 1.2 s of gaps, 0.6 s of this one
    assert fetched == [] and delivered(room) == [1, 2]
    room.feed([ev(3), ev(6)])
    await asyncio.sleep(0.6)
    room.feed([ev(5)])
    assert fetched == [] and delivered(room) == [1, 2, 3, 4, 5, 6] and not room.pending
    room.feed([ev(8)])  # this one never comes over NATS: PostgreSQL has it once its grace is over
    await wait_for(lambda: delivered(room)[-2:] == [7, 8], timeout=5, message="the gap below 8 filled")
    assert fetched == [(6, 7)]
    await room.stop()


async def test_hole_left_by_retention_is_skipped() -> None:
    async def fetch(after: int, upto: int, limit: int) -> list[dict[str, Any]]:
        return [event(s) for s in range(max(after + 1, 8), upto + 1)]  # 1..7 deleted

    room = Room("r", fetch)
    room.feed([ev(10)])
    await wait_for(lambda: delivered(room) == [8, 9, 10], timeout=5, message="the gap below 10 filled")
    await room.catch_up(12)
    assert delivered(room) == [8, 9, 10, 11, 12]
    await room.stop()


def fanout_seconds() -> tuple[float, float]:
    count = REGISTRY.get_sample_value("veza_chat_fanout_seconds_count") or 0.0
    total = REGISTRY.get_sample_value("veza_chat_fanout_seconds_sum") or 0.0
    return count, total


async def test_delivery_delay_is_read_on_the_rooms_clock() -> None:
    """One observation per delivered batch: the room's clock minus the oldest commit time in it."""
    async def fetch(after: int, upto: int, limit: int) -> list[dict[str, Any]]:
        raise AssertionError("no gap")

    room = Room("r", fetch, clock=lambda: 1000.25)
    room.start(0)
    before = fanout_seconds()
    room.feed([encode(event(1, ts=1_000_000)), encode(event(2, ts=1_000_200))])  # committed at 1000.0 and 1000.2
    await wait_for(lambda: fanout_seconds()[0] > before[0], timeout=5, message="the batch delivered")
    count, total = fanout_seconds()
    assert count == before[0] + 1 and abs(total - before[1] - 0.25) < 1e-9
    await room.stop()
