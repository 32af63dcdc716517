"""The room load feed on a real NATS: the chat replicas' RoomConnections snapshots, summed per room for the operator
(GET /api/v1/admin/rooms/load); a snapshot is forgotten once older than the window, malformed ones are dropped
and counted, and only the directory's writers may read it."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats as nats_client
import pytest
from nats.aio.client import Client as Nats
from prometheus_client import REGISTRY

from tests.support.api import ADMIN_EMAIL, ApiServer, ServerFactory
from tests.support.waiting import wait_for
from veza_api.services.room_load import WINDOW_SECONDS, Load, RoomLoad
from veza_core import events
from veza_local.services import NatsService

TOKEN = secrets.token_urlsafe(32)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _replica() -> str:
    return uuid.uuid4().hex[:12]


def _rejected(reason: str) -> float:
    value = REGISTRY.get_sample_value("veza_bus_rejected_total",
                                      {"subject_kind": events.ROOM_CONNECTIONS.kind, "reason": reason})
    return value or 0.0


def _snapshot(room: str, replica: str, connections: int, rate: float | None = None, at: float | None = None) -> bytes:
    """What a chat replica publishes; without a rate, what a worker that predates the field publishes."""
    fields: dict[str, Any] = {"v": 1, "room": room, "replica": replica, "connections": connections,
                              "at": time.time() if at is None else at}
    if rate is not None:
        fields["messages_per_second"] = rate
    return json.dumps(fields).encode()


@pytest.fixture
async def bus(nats: NatsService) -> AsyncIterator[Nats]:
    nc = await nats_client.connect(nats.url)
    yield nc
    await nc.close()


@pytest.fixture(scope="module")
async def load_api(make_api: ServerFactory, nats: NatsService) -> ApiServer:
    return await make_api(nats_url=nats.url, directory_token=TOKEN)


async def test_the_operator_reads_each_rooms_load_summed_over_its_replicas(load_api: ApiServer, bus: Nats) -> None:
    operator = load_api.client.as_user(TOKEN)
    platform = load_api.settings.platform
    busy, quiet, stray, broken = _name("busy"), _name("quiet"), _name("stray"), _name("broken")
    first, second = _replica(), _replica()
    dropped = {reason: _rejected(reason) for reason in ("malformed", "invalid", "subject_mismatch")}

    def on(room: str) -> str:
        return events.ROOM_CONNECTIONS.subject(platform, room)

    async def reported() -> dict[str, Any] | None:
        # As the replicas do every 5 s, until the API's subscription (made in the background) hears them.
        await bus.publish(on(busy), _snapshot(busy, first, 3, 1.5))
        await bus.publish(on(busy), _snapshot(busy, second, 4, 2.25))
        await bus.publish(on(quiet), _snapshot(quiet, first, 1))
        await bus.publish(on(broken), b"{not json")
        await bus.publish(on(broken), _snapshot(broken, first, -1))
        await bus.publish(on(stray), _snapshot(busy, _replica(), 100, 50.0))  # names another room than its subject
        await bus.publish(on(quiet), _snapshot(quiet, first, 2))  # the last one: the others came before it
        await bus.flush()
        rooms = {r["name"]: r for r in (await operator.get("/api/v1/admin/rooms/load")).body["rooms"]}
        return rooms if rooms.get(quiet, {}).get("connections") == 2 else None

    rooms = await wait_for(reported, interval=0.2, message="the snapshots in the load feed")
    assert rooms[busy] == {"name": busy, "connections": 7, "messages_per_second": 3.75, "replicas": 2}
    assert rooms[quiet] == {"name": quiet, "connections": 2, "messages_per_second": 0.0, "replicas": 1}
    assert stray not in rooms and broken not in rooms
    for reason, before in dropped.items():
        assert _rejected(reason) > before, reason

    # A replica's newer snapshot replaces its last one.
    await bus.publish(on(busy), _snapshot(busy, second, 10, 0.5))

    async def updated() -> dict[str, Any] | None:
        found = {r["name"]: r for r in (await operator.get("/api/v1/admin/rooms/load")).body["rooms"]}
        return found[busy] if found[busy]["connections"] == 13 else None

    assert (await wait_for(updated, message="the newer snapshot"))["messages_per_second"] == 2.0
    assert (await operator.get("/api/v1/admin/rooms/load")).body["window_seconds"] == WINDOW_SECONDS


async def test_only_the_directory_writers_read_the_load(load_api: ApiServer) -> None:
    anyone = load_api.client.as_user(None)
    assert (await anyone.get("/api/v1/admin/rooms/load")).status == 401
    user = anyone.as_user((await anyone.register_and_login())["access_token"])
    refused = await user.get("/api/v1/admin/rooms/load")
    assert refused.status == 403 and refused.body["error"]["code"] == "forbidden"
    admin = anyone.as_user((await anyone.register_and_login(ADMIN_EMAIL, name="Root"))["access_token"])
    assert (await admin.get("/api/v1/admin/rooms/load")).status == 200


async def test_a_snapshot_is_forgotten_once_older_than_the_window(bus: Nats) -> None:
    platform, room = f"t{uuid.uuid4().hex[:8]}", _name("room")
    now = [1000.0]
    load = RoomLoad(platform, clock=lambda: now[0])

    async def connection() -> Nats:
        return bus

    load.start(connection)
    try:
        first, second = _replica(), _replica()
        subject = events.ROOM_CONNECTIONS.subject(platform, room)

        def of_room() -> list[Load]:
            return [r for r in load.rooms() if r.name == room]

        async def handled() -> None:
            """Everything published so far has been taken: a marker published after it (same connection, same
            subscription: in order) is in the table."""
            marker = _name("marker")
            await bus.publish(events.ROOM_CONNECTIONS.subject(platform, marker), _snapshot(marker, first, 1, 0.0))
            await wait_for(lambda: any(r.name == marker for r in load.rooms()), message="the marker")

        async def first_heard() -> bool:  # published until the subscription, made in the background, is up
            await bus.publish(subject, _snapshot(room, first, 5, 1.0))
            await bus.flush()
            return of_room() == [Load(room, 5, 1.0, 1)]

        await wait_for(first_heard, interval=0.1, message="the first snapshot")
        await handled()
        now[0] += 10
        sent = time.time()
        await bus.publish(subject, _snapshot(room, second, 2, 0.5, at=sent))
        await wait_for(lambda: of_room() == [Load(room, 7, 1.5, 2)], message="both replicas")

        # An older snapshot of a replica (out of order) does not replace its newer one while that one is live.
        await bus.publish(subject, _snapshot(room, second, 99, 9.0, at=sent - 1))
        await handled()
        assert of_room() == [Load(room, 7, 1.5, 2)]

        now[0] += WINDOW_SECONDS - 10 + 1  # the first replica's snapshot is now older than the window
        assert of_room() == [Load(room, 2, 0.5, 1)]
        now[0] += 10
        assert load.rooms() == []
    finally:
        await load.stop()


async def test_without_nats_the_table_stays_empty() -> None:
    async def no_nats() -> None:
        return None

    load = RoomLoad("nowhere")
    load.start(no_nats)
    await load.stop()
    assert load.rooms() == []
