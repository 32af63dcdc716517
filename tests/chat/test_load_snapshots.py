"""The chat worker's load snapshots (what the operator's autopilot places rooms by, docs/api.md "Room load"):
a room filling up is reported within about a second, a steady room every five, an emptied room once more."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import nats

from tests.support.chat import Chat
from tests.support.waiting import wait_for
from veza_chat.worker import LOAD_EARLY, LOAD_EVERY, load_snapshot_due
from veza_core import events


def test_an_idle_room_is_not_reported_until_it_has_sockets_or_traffic() -> None:
    assert not load_snapshot_due(0, 0, None, 100.0)
    assert load_snapshot_due(3, 0, None, 100.0)
    assert load_snapshot_due(0, 2, None, 100.0)


def test_a_steady_room_is_reported_every_period() -> None:
    assert not load_snapshot_due(40, 9, (40, 100.0), 100.0 + LOAD_EVERY - 0.1)
    assert load_snapshot_due(40, 9, (40, 100.0), 100.0 + LOAD_EVERY)
    # Dropping to nothing is reported once more, at the period (then the room counts as idle again).
    assert load_snapshot_due(0, 0, (40, 100.0), 100.0 + LOAD_EVERY)


def test_a_room_whose_connections_moved_by_a_tenth_is_reported_early() -> None:
    assert load_snapshot_due(44, 0, (40, 100.0), 100.0 + LOAD_EARLY)
    assert load_snapshot_due(36, 0, (40, 100.0), 100.0 + LOAD_EARLY)
    assert not load_snapshot_due(43, 0, (40, 100.0), 100.0 + LOAD_EARLY)  # less than a tenth: at the period
    assert not load_snapshot_due(44, 0, (40, 100.0), 100.0 + LOAD_EARLY - 0.1)  # not twice within a second
    assert load_snapshot_due(1, 0, (0, 100.0), 100.0 + LOAD_EARLY)


async def test_a_worker_reports_a_room_filling_up_within_seconds(chat: Chat) -> None:
    nats_url = chat.services["VEZA_NATS_URL"]
    heard: list[tuple[float, dict[str, Any]]] = []
    nc = await nats.connect(nats_url)
    try:
        async def take(msg: Any) -> None:
            heard.append((time.monotonic(), json.loads(msg.data)))

        await nc.subscribe(events.ROOM_CONNECTIONS.subject("test", chat.room), cb=take)
        w = await chat.worker()
        first = time.monotonic()
        await chat.connect(w, "u0")
        await wait_for(lambda: any(s["connections"] == 1 for _, s in heard), message="the first socket reported")
        assert heard[0][0] - first < LOAD_EARLY + 1.5, "a room's first socket is reported within a second or so"
        # Five more sockets: a move of far more than a tenth, reported early, not after the five-second period.
        grown = time.monotonic()
        for i in range(1, 6):
            await chat.connect(w, f"u{i}")
        await wait_for(lambda: any(s["connections"] == 6 for _, s in heard), message="six sockets reported")
        at_six = next(t for t, s in heard if s["connections"] == 6)
        assert at_six - grown < LOAD_EARLY + 1.5, f"reported {at_six - grown:.1f} s after the sockets came"
        assert all(s["room"] == chat.room and s["replica"] for _, s in heard)
        for client in chat.clients:
            await client.close()
        await wait_for(lambda: heard[-1][1]["connections"] == 0, message="the emptied room reported",
                       timeout=LOAD_EVERY + 5)
        settled = len(heard)
        await asyncio.sleep(LOAD_EVERY + 1.5)
        assert len(heard) == settled, "an idle room is reported once, then no more"
    finally:
        await nc.close()
