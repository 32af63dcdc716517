"""Where a chat room's workers run: on the platform's chat pool, or on a Deployment of its own.

`spec.placement` says Pooled, Dedicated or Auto. An Auto room starts pooled and the autopilot
(`VezaPlatform.spec.chat.autopilot`) promotes it when its load crosses a threshold and demotes it
when its load falls well below (hysteresis), never twice within the cool-down. The load comes from
the platform's API (`GET /api/v1/admin/rooms/load`, read by `directory.py`).

A move goes through a state kept in the room's status (`status.placement`):

    Pooled ──▶ Promoting ──(dedicated workers Ready)──▶ Dedicated
    Dedicated ──▶ Demoting ──(the directory lists the room pooled)──▶ Pooled

The directory (which the workers read) says "dedicated" only once the room is Dedicated, so the
pool serves the room until its own workers are Ready; on the way back the directory says "pooled"
first and the dedicated workers go only once the API holds that and the front door has had
`FRONT_DOOR_SETTLE_SECONDS` to take the route back. The room's one route leads to its pool shard
(`pool_shard`) in every state but Dedicated. Everything here is pure.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from .models import ChatAutopilot, ChatPool

SpecPlacement = Literal["Auto", "Dedicated", "Pooled"]
Target = Literal["Pooled", "Dedicated"]
State = Literal["Pooled", "Promoting", "Dedicated", "Demoting"]
STATES: tuple[State, ...] = ("Pooled", "Promoting", "Dedicated", "Demoting")

# An ingress controller applies a changed route a moment after the API has it (Traefik gathers its provider's
# changes for 2 s by default). The room's own workers outlive the switch by this much, so that the clients they
# close reconnect through the new route, not to a pod just gone (refused: 502; a vanished address: the
# controller's dial timeout, then 504).
FRONT_DOOR_SETTLE_SECONDS = 5.0


@dataclass(frozen=True)
class RoomLoad:
    """A room's load as its platform's API reports it."""

    connections: int = 0
    messages_per_second: float = 0.0
    replicas: int = 0

    def describe(self) -> str:
        return f"{self.connections} connections, {self.messages_per_second:g} messages/s"


def settled(state: State | None) -> Target:
    """The side a room is on or moving to."""
    return "Dedicated" if state in ("Dedicated", "Promoting") else "Pooled"


def hot(load: RoomLoad, autopilot: ChatAutopilot) -> bool:
    return (load.connections >= autopilot.promoteConnections
            or load.messages_per_second >= autopilot.promoteMessagesPerSecond)


def cold(load: RoomLoad, autopilot: ChatAutopilot) -> bool:
    fraction = autopilot.demoteBelowFraction
    return (load.connections < fraction * autopilot.promoteConnections
            and load.messages_per_second < fraction * autopilot.promoteMessagesPerSecond)


def desired_placement(spec: SpecPlacement, status_placement: State | None, load: RoomLoad | None,
                      changed_at: datetime | None, now: datetime, autopilot: ChatAutopilot, *,
                      pool_enabled: bool = True) -> Target:
    """Where the room should be. Pooled and Dedicated are obeyed at once; Auto follows the load.

    An Auto room stays where it is (or where it is moving to) while its load is unknown, within the
    cool-down after its last move, and between the demotion and promotion thresholds. Without a pool
    an Auto room is Dedicated.
    """
    if spec != "Auto":
        return spec
    if not pool_enabled:
        return "Dedicated"
    side = settled(status_placement)
    if load is None:
        return side
    if changed_at is not None and (now - changed_at).total_seconds() < autopilot.coolDownSeconds:
        return side
    if side == "Pooled":
        return "Dedicated" if hot(load, autopilot) else "Pooled"
    return "Pooled" if cold(load, autopilot) else "Dedicated"


def next_state(current: State | None, target: Target, *, dedicated_ready: bool, declared_pooled: bool,
               has_dedicated: bool, route_settled: bool) -> State:
    """One step of a move towards `target`.

    `dedicated_ready`: the room's own Deployment has all its replicas ready; `declared_pooled`: the API's
    directory holds the room as pooled; `has_dedicated`: the room has a Deployment (a room from before
    placements existed has one and no state: it is demoted, not dropped); `route_settled`: the room has been
    Demoting, its route back on its shard, for `FRONT_DOOR_SETTLE_SECONDS`.
    """
    if current is None:
        if target == "Pooled" and has_dedicated:
            return "Demoting"
        return target
    if target == "Dedicated":
        if current in ("Dedicated", "Demoting"):  # a demotion not finished is called off: its workers still run
            return "Dedicated"
        return "Dedicated" if current == "Promoting" and dedicated_ready else "Promoting"
    if current in ("Pooled", "Promoting"):  # a promotion not finished is called off: the pool still serves
        return "Pooled"
    return "Pooled" if current == "Demoting" and declared_pooled and route_settled else "Demoting"


def has_dedicated_workers(state: State) -> bool:
    """Whether the room's own Deployment and Service exist in this state (its route always does)."""
    return state != "Pooled"


def routed_to_own(state: State) -> bool:
    """Whether the room's route leads to its own Service; else to its pool shard's. Only once Dedicated: while
    Promoting its workers are not ready yet, and a demotion switches the route back before they go."""
    return state == "Dedicated"


def declared(spec: SpecPlacement, state: State | None) -> Literal["pooled", "dedicated"]:
    """What the directory tells the workers: dedicated only once the room's own workers took over."""
    if state is None:
        return "dedicated" if spec == "Dedicated" else "pooled"
    return "dedicated" if state == "Dedicated" else "pooled"


def pool_shard(room: str, shards: int) -> int:
    """The pool shard a room is routed to while pooled: crc32 of its name modulo the shards (stable across
    restarts and operators; changing `shards` re-routes most rooms)."""
    return zlib.crc32(room.encode()) % shards


def pool_replicas(pool: ChatPool, rooms: int, connections: int) -> int:
    """Workers of one pool shard for its `rooms` pooled rooms holding `connections`, within the pool's bounds."""
    wanted = max(math.ceil(rooms / pool.targetRoomsPerWorker),
                 math.ceil(connections / pool.targetConnectionsPerWorker))
    return max(pool.minReplicas, min(pool.maxReplicas, wanted))


def parse_state(value: object) -> State | None:
    return next((state for state in STATES if state == value), None)
