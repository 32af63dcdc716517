"""The per-replica sequencer alone (room.Room): order, exactly once, gap fills racing fan-out."""

from __future__ import annotations

import asyncio
from typing import Any

from veza_chat.room import Encoded, Room, encode


def event(seq: int) -> dict[str, Any]:
    return {"seq": seq, "kind": "message", "id": str(seq), "author": {"id": "a"}, "ts": 0, "text": str(seq)}


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
    fetching = asyncio.Event()

    async def slow_fetch(after: int, upto: int, limit: int) -> list[dict[str, Any]]:
        fetching.set()
        await asyncio.sleep(0.1)
        return [event(s) for s in range(after + 1, upto + 1)][:limit]

    room = Room("r", slow_fetch)
    room.feed([ev(4), ev(5)])  # 1..3 missing: a fill starts after the grace period
    await fetching.wait()
    room.feed([ev(1), ev(2), ev(3), ev(6)])  # fan-out brings them while the query runs
    await asyncio.sleep(0.2)
    assert delivered(room) == [1, 2, 3, 4, 5, 6]
    await room.stop()


async def test_hole_left_by_retention_is_skipped() -> None:
    async def fetch(after: int, upto: int, limit: int) -> list[dict[str, Any]]:
        return [event(s) for s in range(max(after + 1, 8), upto + 1)]  # 1..7 deleted

    room = Room("r", fetch)
    room.feed([ev(10)])
    await asyncio.sleep(0.1)
    assert delivered(room) == [8, 9, 10]
    await room.catch_up(12)
    assert delivered(room) == [8, 9, 10, 11, 12]
    await room.stop()
