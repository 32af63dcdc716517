"""Where rooms run: the placement decision and its moves (pure), and pooled and dedicated rooms on a real API server."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats as nats_client
import pytest
from pydantic import ValidationError

from tests.operator.test_directory import call
from tests.support.api import ISSUER, write_keys
from tests.support.db import fresh_database
from tests.support.kube import KubeCluster
from tests.support.operator import (
    OPERATOR_USER,
    OperatorProcess,
    condition,
    connections_secret,
    platform,
    quiet,
    resync_rounds,
    room,
    wait_condition,
    writes_by,
)
from tests.support.process import VezaProcess
from veza_core import events
from veza_core.keys import generate_signing_key
from veza_core.specs import ChatRoomSpec
from veza_local.controlplane import wait_for
from veza_local.services import NatsService, PostgresService, RedisService
from veza_operator import platform as platform_mod
from veza_operator.chatroom import CHAT_WORKERS, parse_time, place_room
from veza_operator.controller import Context, Store
from veza_operator.models import ChatAutopilot, ChatPool, VezaPlatformSpec
from veza_operator.naming import Owner
from veza_operator.placement import (
    FRONT_DOOR_SETTLE_SECONDS,
    RoomLoad,
    declared,
    desired_placement,
    next_state,
    pool_replicas,
    pool_shard,
)
from veza_operator.wiring import worker_spec
from veza_operator.workers import build_children

AUTOPILOT = ChatAutopilot()  # promote at 2000 connections or 50 messages/s, demote below a quarter, 300 s cool-down
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LONG_AGO = NOW - timedelta(hours=1)
QUIET = RoomLoad(connections=10, messages_per_second=0.5)
BUSY = RoomLoad(connections=2000, messages_per_second=1)
CHATTY = RoomLoad(connections=5, messages_per_second=50)
BETWEEN = RoomLoad(connections=1000, messages_per_second=20)  # below promotion, above demotion


# -- desired_placement ---------------------------------------------------------------------------

@pytest.mark.parametrize("state", [None, "Pooled", "Promoting", "Dedicated", "Demoting"])
@pytest.mark.parametrize("load", [None, QUIET, BUSY])
def test_an_explicit_placement_is_obeyed_at_once_whatever_the_load_and_the_cool_down(state: Any, load: Any) -> None:
    assert desired_placement("Dedicated", state, load, NOW, NOW, AUTOPILOT) == "Dedicated"
    assert desired_placement("Pooled", state, load, NOW, NOW, AUTOPILOT) == "Pooled"
    assert desired_placement("Dedicated", state, load, NOW, NOW, AUTOPILOT, pool_enabled=False) == "Dedicated"


def test_an_auto_room_starts_pooled_and_is_promoted_by_connections_or_messages() -> None:
    assert desired_placement("Auto", None, None, None, NOW, AUTOPILOT) == "Pooled"
    assert desired_placement("Auto", None, QUIET, None, NOW, AUTOPILOT) == "Pooled"
    assert desired_placement("Auto", "Pooled", BUSY, LONG_AGO, NOW, AUTOPILOT) == "Dedicated"
    assert desired_placement("Auto", "Pooled", CHATTY, LONG_AGO, NOW, AUTOPILOT) == "Dedicated"
    just_below = RoomLoad(connections=1999, messages_per_second=49.9)
    assert desired_placement("Auto", "Pooled", just_below, LONG_AGO, NOW, AUTOPILOT) == "Pooled"


def test_hysteresis_between_the_demotion_and_the_promotion_thresholds() -> None:
    # Between the two thresholds a room stays on whichever side it is.
    assert desired_placement("Auto", "Pooled", BETWEEN, LONG_AGO, NOW, AUTOPILOT) == "Pooled"
    assert desired_placement("Auto", "Dedicated", BETWEEN, LONG_AGO, NOW, AUTOPILOT) == "Dedicated"
    # Demoted only when both figures are below the fraction of their promotion threshold.
    assert desired_placement("Auto", "Dedicated", QUIET, LONG_AGO, NOW, AUTOPILOT) == "Pooled"
    connections_high = RoomLoad(connections=500, messages_per_second=0)  # 500 = 0.25 * 2000: not below
    assert desired_placement("Auto", "Dedicated", connections_high, LONG_AGO, NOW, AUTOPILOT) == "Dedicated"
    messages_high = RoomLoad(connections=0, messages_per_second=12.5)
    assert desired_placement("Auto", "Dedicated", messages_high, LONG_AGO, NOW, AUTOPILOT) == "Dedicated"
    assert desired_placement("Auto", "Dedicated", RoomLoad(499, 12.4), LONG_AGO, NOW, AUTOPILOT) == "Pooled"


def test_a_room_stays_where_it_was_moved_during_the_cool_down() -> None:
    recently = NOW - timedelta(seconds=AUTOPILOT.coolDownSeconds - 1)
    expired = NOW - timedelta(seconds=AUTOPILOT.coolDownSeconds)
    assert desired_placement("Auto", "Pooled", BUSY, recently, NOW, AUTOPILOT) == "Pooled"
    assert desired_placement("Auto", "Pooled", BUSY, expired, NOW, AUTOPILOT) == "Dedicated"
    assert desired_placement("Auto", "Dedicated", QUIET, recently, NOW, AUTOPILOT) == "Dedicated"
    assert desired_placement("Auto", "Dedicated", QUIET, expired, NOW, AUTOPILOT) == "Pooled"
    no_cool_down = AUTOPILOT.model_copy(update={"coolDownSeconds": 0})
    assert desired_placement("Auto", "Pooled", BUSY, NOW, NOW, no_cool_down) == "Dedicated"


def test_a_move_under_way_keeps_its_direction_until_the_load_says_otherwise() -> None:
    assert desired_placement("Auto", "Promoting", None, LONG_AGO, NOW, AUTOPILOT) == "Dedicated"
    assert desired_placement("Auto", "Promoting", BETWEEN, LONG_AGO, NOW, AUTOPILOT) == "Dedicated"
    assert desired_placement("Auto", "Demoting", None, LONG_AGO, NOW, AUTOPILOT) == "Pooled"
    assert desired_placement("Auto", "Demoting", BETWEEN, LONG_AGO, NOW, AUTOPILOT) == "Pooled"
    # Within the cool-down of its start, a promotion is not reversed by a dip.
    assert desired_placement("Auto", "Promoting", QUIET, NOW - timedelta(seconds=5), NOW, AUTOPILOT) == "Dedicated"


def test_an_unknown_load_moves_nothing() -> None:
    for state in ("Pooled", "Dedicated"):
        assert desired_placement("Auto", state, None, LONG_AGO, NOW, AUTOPILOT) == state


def test_without_a_pool_an_auto_room_is_dedicated() -> None:
    assert desired_placement("Auto", None, None, None, NOW, AUTOPILOT, pool_enabled=False) == "Dedicated"
    assert desired_placement("Auto", "Pooled", QUIET, NOW, NOW, AUTOPILOT, pool_enabled=False) == "Dedicated"


def test_autopilot_bounds() -> None:
    for bad in ({"demoteBelowFraction": 1.0}, {"demoteBelowFraction": 0}, {"promoteConnections": 0},
                {"coolDownSeconds": -1}):
        with pytest.raises(ValidationError):
            ChatAutopilot.model_validate(bad)
    with pytest.raises(ValidationError, match="minReplicas"):
        ChatPool.model_validate({"minReplicas": 5, "maxReplicas": 4})


# -- next_state: the moves ---------------------------------------------------------------------------

def step(current: Any, target: Any, *, ready: bool = False, pooled: bool = False, has: bool = False,
         settled: bool = True) -> str:
    return next_state(current, target, dedicated_ready=ready, declared_pooled=pooled, has_dedicated=has,
                      route_settled=settled)


def test_a_new_room_starts_where_it_should_be() -> None:
    assert step(None, "Pooled") == "Pooled"
    assert step(None, "Dedicated") == "Dedicated"
    # A room from before placements existed has its own workers: they go only once the pool has it.
    assert step(None, "Pooled", has=True) == "Demoting"


def test_promotion_waits_for_the_rooms_own_workers() -> None:
    assert step("Pooled", "Dedicated") == "Promoting"
    assert step("Pooled", "Dedicated", ready=True) == "Promoting"  # one step at a time
    assert step("Promoting", "Dedicated", ready=False, has=True) == "Promoting"
    assert step("Promoting", "Dedicated", ready=True, has=True) == "Dedicated"
    assert step("Dedicated", "Dedicated", ready=False, has=True) == "Dedicated"


def test_demotion_waits_for_the_directory() -> None:
    assert step("Dedicated", "Pooled", ready=True, has=True) == "Demoting"
    assert step("Dedicated", "Pooled", ready=True, has=True, pooled=True) == "Demoting"  # declared after Demoting
    assert step("Demoting", "Pooled", ready=True, has=True) == "Demoting"
    assert step("Demoting", "Pooled", ready=True, has=True, pooled=True) == "Pooled"
    assert step("Pooled", "Pooled", pooled=True) == "Pooled"


def test_demotion_lets_the_front_door_take_the_route_back_before_the_rooms_workers_go() -> None:
    assert step("Demoting", "Pooled", ready=True, has=True, pooled=True, settled=False) == "Demoting"
    assert step("Demoting", "Pooled", ready=True, has=True, pooled=True, settled=True) == "Pooled"
    assert step("Demoting", "Dedicated", ready=True, has=True, pooled=True, settled=False) == "Dedicated"


def test_a_move_called_off_goes_back_to_where_the_room_is_served() -> None:
    assert step("Promoting", "Pooled", has=True) == "Pooled"  # the pool still served it
    assert step("Demoting", "Dedicated", ready=True, has=True, pooled=True) == "Dedicated"


def test_the_directory_says_dedicated_only_once_the_room_is_dedicated() -> None:
    assert declared("Dedicated", None) == "dedicated"
    assert declared("Auto", None) == "pooled" and declared("Pooled", None) == "pooled"
    assert [declared("Auto", s) for s in ("Pooled", "Promoting", "Dedicated", "Demoting")] == \
        ["pooled", "pooled", "dedicated", "pooled"]
    assert declared("Dedicated", "Promoting") == "pooled"


def test_the_pool_is_sized_by_rooms_and_connections_within_its_bounds() -> None:
    pool = ChatPool()  # 2..10 workers, 1000 rooms and 5000 connections each
    assert pool_replicas(pool, 0, 0) == 2
    assert pool_replicas(pool, 2500, 0) == 3
    assert pool_replicas(pool, 10, 20001) == 5
    assert pool_replicas(pool, 1_000_000, 0) == 10


# -- the pool's objects (builders) ------------------------------------------------------------------

def test_the_pool_is_wired_like_a_rooms_workers_without_a_room() -> None:
    owner = Owner("VezaPlatform", "demo", "ns", "u")
    spec = VezaPlatformSpec.model_validate(platform("ns")["spec"])
    children = {(c["kind"], c["metadata"]["name"]): c for c in platform_mod.build_children(owner, spec,
                                                                                           pool_replicas=[3])}
    pool = children[("Deployment", "demo-chat-pool")]
    container = pool["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["chat", "--pool"] and pool["spec"]["replicas"] == 3
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VEZA_COMPONENT"] == "chat" and env["VEZA_CHAT_MIGRATE"] == "0"
    assert "VEZA_RESOURCE_NAME" not in env and "VEZA_RESOURCE_SPEC" not in env
    labels = pool["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "chat" and labels["veza.io/platform"] == "demo"
    assert labels["app.kubernetes.io/instance"] == "demo-chat-pool" and labels["veza.io/pool-shard"] == "0"
    # The NetworkPolicies select the platform's pods: the pool's are among them, as a room's are.
    for policy in (c for (kind, _), c in children.items() if kind == "NetworkPolicy"
                   and c["metadata"]["name"] in ("demo-allow-http", "demo-allow-egress", "demo-default-deny")):
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert ("Ingress", "demo-chat-pool") not in children, "no catch-all route: each room has its own"
    assert ("Service", "demo-chat-pool") in children and ("PodDisruptionBudget", "demo-chat-pool") in children
    one = platform_mod.build_children(owner, spec.model_copy(update={"chat": spec.chat.model_copy(update={
        "pool": ChatPool(minReplicas=1, maxReplicas=1)})}))
    assert not any(c["kind"] == "PodDisruptionBudget" and c["metadata"]["name"] == "demo-chat-pool" for c in one)


def sharded(shards: int, **pool: Any) -> VezaPlatformSpec:
    return VezaPlatformSpec.model_validate(platform("ns", chat={"pool": {"shards": shards, **pool}})["spec"])


def test_each_shard_is_a_deployment_and_service_of_its_own_sized_on_its_rooms() -> None:
    owner = Owner("VezaPlatform", "demo", "ns", "u")
    children = platform_mod.build_children(owner, sharded(3), pool_replicas=[1, 4, 2])
    pools = {c["metadata"]["name"]: c for c in children if c["kind"] == "Deployment"
             and c["spec"]["template"]["metadata"]["labels"].get("veza.io/pool-shard") is not None}
    assert {name: d["spec"]["replicas"] for name, d in pools.items()} == {
        "demo-chat-pool-0": 1, "demo-chat-pool-1": 4, "demo-chat-pool-2": 2}
    for shard, (name, deployment) in enumerate(sorted(pools.items())):
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector["app.kubernetes.io/instance"] == name
        assert deployment["spec"]["template"]["metadata"]["labels"]["veza.io/pool-shard"] == str(shard)
    names = {(c["kind"], c["metadata"]["name"]) for c in children}
    assert {("Service", f"demo-chat-pool-{i}") for i in range(3)} <= names
    assert {n for kind, n in names if kind == "PodDisruptionBudget" and "chat-pool" in n} == {
        "demo-chat-pool-1", "demo-chat-pool-2"}, "a PDB past one replica"
    assert not any(kind in ("Ingress", "HTTPRoute") and "chat-pool" in n for kind, n in names)
    assert [c["spec"]["replicas"] for c in platform_mod.build_children(owner, sharded(2, minReplicas=3))
            if c["kind"] == "Deployment" and "chat-pool" in c["metadata"]["name"]] == [3, 3]
    with pytest.raises(ValidationError):
        sharded(0)
    with pytest.raises(ValidationError):
        sharded(101)


def test_a_room_is_on_a_stable_shard_spread_evenly() -> None:
    assert pool_shard("general", 1) == 0
    # crc32 of the name, as documented: the same in every operator process (unlike Python's salted hash()).
    assert all(pool_shard(f"room-{i}", 4) == zlib.crc32(f"room-{i}".encode()) % 4 for i in range(50))
    counts = [0] * 4
    for i in range(4000):
        counts[pool_shard(f"room-{i}", 4)] += 1
    assert min(counts) > 800, counts


ROOM = Owner("ChatRoom", "hall", "ns", "room-uid")


def room_route_backends(spec: VezaPlatformSpec, state: str, wanted: str, *, dedicated_ready: bool = False
                        ) -> tuple[str, list[str], dict[str, Any]]:
    """What a room in `state` with `spec.placement: wanted` steps to, the Services its routes lead to, and the
    kinds of its children."""
    store = Store()
    ctx = Context(client=None, store=store)  # type: ignore[arg-type]  # no transition here posts an Event
    raw = {"platformRef": {"name": "demo"}, "placement": wanted}
    body = {"kind": "ChatRoom", "metadata": {"name": "hall", "namespace": "ns", "uid": "room-uid"}, "spec": raw,
            "status": {"placement": state, "placementChangedAt": "2026-01-01T00:00:00Z"}}
    if state != "Pooled":
        ready = {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "availableReplicas": 1}
        store.children[("Deployment", "ns", "chat-hall")] = {
            "metadata": {"name": "chat-hall", "namespace": "ns", "generation": 1},
            "spec": {"replicas": 1}, "status": {"observedGeneration": 1, **(ready if dedicated_ready else {})}}
    room_spec = ChatRoomSpec.model_validate(raw)
    placed = asyncio.run(place_room(ctx, ("ChatRoom", "ns", "hall"), body, room_spec, spec))
    children = build_children(CHAT_WORKERS, ROOM, room_spec, raw, "demo", spec, http_routes=True,
                              dedicated=placed.dedicated, route_to=placed.route_to)
    backends = [c["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] if c["kind"] == "Ingress"
                else c["spec"]["rules"][0]["backendRefs"][0]["name"]
                for c in children if c["kind"] in ("Ingress", "HTTPRoute")]
    return str(placed.status["placement"]), backends, {"kinds": sorted(c["kind"] for c in children),
                                                        **placed.status}


def test_a_rooms_one_route_leads_to_its_shard_until_its_own_workers_serve_it() -> None:
    spec = VezaPlatformSpec.model_validate({**platform("ns", chat={"pool": {"shards": 3}})["spec"],
                                            "gateway": {"name": "public"}})
    shard = f"demo-chat-pool-{pool_shard('hall', 3)}"
    # Pooled: the route, to its shard, is all the room has.
    state, backends, seen = room_route_backends(spec, "Pooled", "Pooled")
    assert (state, backends, seen["kinds"], seen["poolShard"]) == ("Pooled", [shard, shard],
                                                                   ["HTTPRoute", "Ingress"], pool_shard("hall", 3))
    # Promoting: its own workers start; the route still leads to the shard.
    state, backends, seen = room_route_backends(spec, "Pooled", "Dedicated")
    assert (state, backends) == ("Promoting", [shard, shard]) and "Deployment" in seen["kinds"]
    state, backends, _ = room_route_backends(spec, "Promoting", "Dedicated")
    assert (state, backends) == ("Promoting", [shard, shard]), "not before its workers are ready"
    # Dedicated: the same route now leads to its own Service.
    state, backends, seen = room_route_backends(spec, "Promoting", "Dedicated", dedicated_ready=True)
    assert (state, backends, seen["poolShard"]) == ("Dedicated", ["chat-hall", "chat-hall"], None)
    # Demoting: back to the shard at once, while its own Deployment still runs.
    state, backends, seen = room_route_backends(spec, "Dedicated", "Pooled")
    assert (state, backends) == ("Demoting", [shard, shard])
    assert {"Deployment", "Service", "Ingress", "HTTPRoute"} <= set(seen["kinds"])
    # One shard: the pool's name of old.
    _, backends, _ = room_route_backends(VezaPlatformSpec.model_validate(platform("ns")["spec"]), "Pooled", "Auto")
    assert backends == ["demo-chat-pool"]


# -- against the API server ------------------------------------------------------------------------

ROOM_KINDS = ("deployment", "service", "ingress", "poddisruptionbudget", "horizontalpodautoscaler")


def room_objects(kube: KubeCluster, ns: str, name: str) -> list[str]:
    """The objects of a room's own workers that exist."""
    return [kind for kind in ROOM_KINDS if kube.get(kind, f"chat-{name}", ns) is not None]


def route_backend(kube: KubeCluster, ns: str, name: str) -> str | None:
    """The Service a room's own route (its Ingress) leads to."""
    ingress = kube.get("ingress", f"chat-{name}", ns)
    if ingress is None:
        return None
    (path,) = ingress["spec"]["rules"][0]["http"]["paths"]
    assert path["path"] == f"/chat/{name}"
    return str(path["backend"]["service"]["name"])


@pytest.mark.kube
def test_a_pooled_room_and_a_dedicated_room_side_by_side(kube: KubeCluster, ns: str) -> None:
    kube.apply(connections_secret(ns), platform(ns), room(ns, "lounge"),
               room(ns, "stage", placement="Dedicated", replicas=2))
    lounge = wait_condition(kube, "chatroom", "lounge", ns, reason="Pooled")
    stage = wait_condition(kube, "chatroom", "stage", ns)
    assert lounge["status"]["placement"] == "Pooled" and lounge["status"]["url"] == "http://veza.test/chat/lounge"
    assert room_objects(kube, ns, "lounge") == ["ingress"], "a pooled room adds its route and nothing else"
    assert route_backend(kube, ns, "lounge") == "demo-chat-pool" and lounge["status"]["poolShard"] == 0
    lounge_route = kube.get("ingress", "chat-lounge", ns) or {}
    assert lounge_route["metadata"]["ownerReferences"][0]["kind"] == "ChatRoom", "deleting the room takes it"
    assert stage["status"]["placement"] == "Dedicated" and "poolShard" not in stage["status"]
    assert room_objects(kube, ns, "stage") == ["deployment", "service", "ingress", "poddisruptionbudget"]
    assert route_backend(kube, ns, "stage") == "chat-stage"

    pool = kube.get("deployment", "demo-chat-pool", ns)
    assert pool is not None and pool["spec"]["template"]["spec"]["containers"][0]["args"] == ["chat", "--pool"]
    assert kube.get("service", "demo-chat-pool", ns) is not None
    assert kube.get("poddisruptionbudget", "demo-chat-pool", ns) is not None
    assert kube.get("ingress", "demo-chat-pool", ns) is None, "no catch-all /chat route"

    def pool_status() -> dict[str, Any] | None:
        found = ((kube.get("vezaplatform", "demo", ns) or {}).get("status") or {}).get("chatPool")
        return found if found and found.get("readyReplicas") == 2 and found.get("rooms") == 1 else None

    assert wait_for(pool_status, timeout=30, message="the platform reports its pool") == {
        "replicas": 2, "readyReplicas": 2, "rooms": 1,
        "shards": [{"name": "demo-chat-pool", "replicas": 2, "readyReplicas": 2, "rooms": 1}]}
    wait_condition(kube, "vezaplatform", "demo", ns)

    kube.kubectl("delete", "chatroom", "lounge", "-n", ns, "--wait=true")
    wait_for(lambda: kube.get("ingress", "chat-lounge", ns) is None, timeout=60,
             message="the room's route goes with it")


@pytest.mark.kube
def test_shards_are_sized_on_their_own_rooms_and_changing_them_reroutes_rooms(kube: KubeCluster, ns: str) -> None:
    names = [f"r{i}" for i in range(6)]
    pool = {"minReplicas": 1, "maxReplicas": 5, "targetRoomsPerWorker": 1}
    kube.apply(connections_secret(ns), platform(ns, chat={"pool": pool}), *(room(ns, n) for n in names))
    for n in names:
        wait_condition(kube, "chatroom", n, ns, reason="Pooled")
    assert {route_backend(kube, ns, n) for n in names} == {"demo-chat-pool"}
    wait_for(lambda: (kube.get("deployment", "demo-chat-pool", ns) or {}).get("spec", {}).get("replicas") == 5,
             timeout=30, message="one shard holding six rooms at one room a worker: its maximum")

    kube.apply(platform(ns, chat={"pool": {**pool, "shards": 3}}))
    expected = {n: pool_shard(n, 3) for n in names}
    rooms_of = [sorted(n for n, s in expected.items() if s == shard) for shard in range(3)]
    for n, shard in expected.items():
        wait_for(lambda n=n, shard=shard: route_backend(kube, ns, n) == f"demo-chat-pool-{shard}", timeout=60,
                 message=f"room {n} re-routed to shard {shard}")
    for shard, rooms in enumerate(rooms_of):  # each shard sized on its own rooms
        wanted = max(1, len(rooms))
        wait_for(lambda shard=shard, wanted=wanted: (kube.get("deployment", f"demo-chat-pool-{shard}", ns) or {})
                 .get("spec", {}).get("replicas") == wanted, timeout=60, message=f"shard {shard} sized {wanted}")
        selector = (kube.get("deployment", f"demo-chat-pool-{shard}", ns) or {})["spec"]["selector"]
        assert selector["matchLabels"]["app.kubernetes.io/instance"] == f"demo-chat-pool-{shard}"
    wait_for(lambda: kube.get("deployment", "demo-chat-pool", ns) is None, timeout=30,
             message="the single shard's Deployment pruned")

    def shards_status() -> list[dict[str, Any]] | None:
        found = ((kube.get("vezaplatform", "demo", ns) or {}).get("status") or {}).get("chatPool") or {}
        listed = found.get("shards") or []
        return listed if [e.get("rooms") for e in listed] == [len(r) for r in rooms_of] else None

    listed = wait_for(shards_status, timeout=60, message="the platform lists its shards")
    assert [e["name"] for e in listed] == [f"demo-chat-pool-{i}" for i in range(3)]
    for n, shard in expected.items():
        r = wait_condition(kube, "chatroom", n, ns, reason="Pooled")
        assert r["status"]["poolShard"] == shard and f"demo-chat-pool-{shard}" in condition(r)["message"]


@pytest.mark.kube
def test_no_writes_when_nothing_changes_with_pooled_rooms(kube: KubeCluster, ns: str,
                                                          operator: OperatorProcess) -> None:
    if kube.plane is None:
        pytest.skip("counting write requests needs the local control plane's audit log")
    kube.apply(connections_secret(ns), platform(ns), room(ns, "pooled"), room(ns, "own", placement="Dedicated"))
    wait_condition(kube, "chatroom", "pooled", ns, reason="Pooled")
    wait_condition(kube, "chatroom", "own", ns)
    wait_condition(kube, "vezaplatform", "demo", ns)
    since = quiet(kube, ns)
    resync_rounds(kube, operator, 2)
    writes = [w for w in writes_by(kube, OPERATOR_USER, since) if w["objectRef"].get("namespace") == ns]
    assert writes == [], [(w["verb"], w["objectRef"]) for w in writes]


@pytest.mark.kube
def test_a_pool_disabled_platform_serves_auto_rooms_dedicated_and_reports_pooled_ones(kube: KubeCluster,
                                                                                       ns: str) -> None:
    kube.apply(connections_secret(ns), platform(ns, chat={"pool": {"enabled": False}}), room(ns, "auto"),
               room(ns, "pinned", placement="Pooled"))
    r = wait_condition(kube, "chatroom", "auto", ns)
    assert r["status"]["placement"] == "Dedicated" and kube.get("deployment", "chat-auto", ns) is not None
    r = wait_condition(kube, "chatroom", "pinned", ns, status="False", reason="PoolDisabled")
    assert condition(r, "Degraded")["status"] == "True"
    assert kube.get("deployment", "demo-chat-pool", ns) is None
    assert "chatPool" not in (kube.get("vezaplatform", "demo", ns) or {}).get("status", {})


@pytest.mark.kube
def test_many_rooms_created_at_once_settle_pooled_with_their_routes_only(kube: KubeCluster, ns: str) -> None:
    count = 1000
    kube.apply(connections_secret(ns), platform(ns))
    wait_condition(kube, "vezaplatform", "demo", ns)
    before = objects_in(kube, ns)
    started = time.monotonic()
    kube.apply(*(room(ns, f"room-{i}") for i in range(count)))
    applied = time.monotonic() - started

    def settled() -> bool:
        found = kube.kubectl("get", "chatrooms", "-n", ns, "-o",
                             "jsonpath={range .items[*]}{.status.placement}{'\\n'}{end}").split()
        return found.count("Pooled") == count

    wait_for(settled, timeout=300, interval=2, message=f"{count} rooms pooled")
    elapsed = time.monotonic() - started
    wait_condition(kube, "chatroom", f"room-{count - 1}", ns, reason="Pooled")
    assert objects_in(kube, ns) == {**before, "ingresses": before["ingresses"] + count}, \
        "each pooled room adds its route and no Deployment, Service or PDB"
    room_events = kube.kubectl("get", "events", "-n", ns, "--field-selector", "involvedObject.kind=ChatRoom",
                               "-o", "name").split()
    assert room_events == [], "a room Ready at its first report posts no Event (nothing changed)"
    print(f"{count} rooms pooled in {elapsed:.1f} s (created in {applied:.1f} s)")


def objects_in(kube: KubeCluster, ns: str) -> dict[str, int]:
    out = {}
    for kind in ("deployments", "services", "ingresses", "poddisruptionbudgets", "horizontalpodautoscalers"):
        out[kind] = len(kube.kubectl("get", kind, "-n", ns, "-o", "name").split())
    return out


# -- moves, with the platform's API a real process (kwok's pods serve nothing) -------------------------

@pytest.fixture(scope="module")
async def placement_database(postgres: PostgresService) -> str:
    return await fresh_database(postgres, "placement")


@pytest.fixture
def move_ns(kube: KubeCluster, operator_stepped_aside: None) -> Iterator[str]:
    name = kube.create_namespace("move")
    yield name
    kube.delete_namespace(name)


def listed_room(base: str, token: str, name: str) -> dict[str, Any] | None:
    status, body = call(base, "GET", "/api/v1/admin/rooms", token)
    assert status == 200, body
    return next((r for r in body["rooms"] if r["name"] == name), None)


def events_of(kube: KubeCluster, ns: str, name: str) -> list[dict[str, Any]]:
    found = json.loads(kube.kubectl("get", "events", "-n", ns, "-o", "json", "--field-selector",
                                    f"involvedObject.kind=ChatRoom,involvedObject.name={name}"))["items"]
    return list(found)


def api_process(database: str, redis: RedisService, tmp_path: Path, **env: str) -> VezaProcess:
    keys = tmp_path / "keys"
    write_keys(keys, [generate_signing_key()])
    return VezaProcess("api", {
        "VEZA_PLATFORM": "demo", "VEZA_DATABASE_URL": database, "VEZA_REDIS_URL": redis.url,
        "VEZA_JWT_ISSUER": ISSUER, "VEZA_JWT_KEYS_DIR": str(keys), "VEZA_MAIL_DIR": str(tmp_path / "mail"),
        "VEZA_S3_ENDPOINT": "http://127.0.0.1:9", "VEZA_S3_BUCKET": "unused", **env}, tmp_path / "api.log")


def operator_for(operator_install: Path, ns: str, api: VezaProcess, tmp_path: Path) -> OperatorProcess:
    return OperatorProcess(operator_install, tmp_path / "operator.log", peering=None, namespaces=[ns],
                           extra_env={"VEZA_DIRECTORY_URL": api.url, "VEZA_DIRECTORY_RETRY_MAX_SECONDS": "1",
                                      "VEZA_LOAD_INTERVAL_SECONDS": "1"}).start()


def start_api_with_the_directory_token(kube: KubeCluster, ns: str, api: VezaProcess) -> str:
    """The platform's directory credential, once the operator made it, given to the API process, started."""
    secret = wait_for(lambda: kube.get("secret", "demo-directory", ns), timeout=60, message="directory Secret")
    token = base64.b64decode(secret["data"]["token"]).decode()
    api.env["VEZA_DIRECTORY_TOKEN"] = token
    api.start()
    return token


@pytest.mark.kube
def test_switching_pooled_dedicated_pooled_creates_then_prunes_through_the_directory(
        kube: KubeCluster, operator_install: Path, move_ns: str, placement_database: str, redis: RedisService,
        tmp_path: Path) -> None:
    ns = move_ns
    api = api_process(placement_database, redis, tmp_path)
    base = api.url
    operator = operator_for(operator_install, ns, api, tmp_path)
    try:
        kube.apply(connections_secret(ns), platform(ns), room(ns, "hall", placement="Pooled", title="Hall"))
        token = start_api_with_the_directory_token(kube, ns, api)

        r = wait_condition(kube, "chatroom", "hall", ns, reason="Pooled")
        assert r["status"]["placement"] == "Pooled" and room_objects(kube, ns, "hall") == ["ingress"]
        assert route_backend(kube, ns, "hall") == "demo-chat-pool"
        route_uid = (kube.get("ingress", "chat-hall", ns) or {})["metadata"]["uid"]
        row = wait_for(lambda: (found := listed_room(base, token, "hall")) and found.get("placement") == "pooled"
                       and found, timeout=60, message="the room declared pooled")
        # The worker spec a pool worker serves it with: what its own workers would get (defaults included).
        assert row["spec"] == worker_spec((kube.get("chatroom", "hall", ns) or {})["spec"])
        assert row["spec"]["title"] == "Hall" and "placement" not in row["spec"]

        # Pooled -> Dedicated: its own workers first, then the directory says dedicated.
        kube.apply(room(ns, "hall", placement="Dedicated", title="Hall"))
        r = wait_for(lambda: (found := kube.get("chatroom", "hall", ns)) and
                     found["status"].get("placement") == "Dedicated" and found, timeout=60,
                     message="the room dedicated")
        assert room_objects(kube, ns, "hall") == ["deployment", "service", "ingress"]
        assert route_backend(kube, ns, "hall") == "chat-hall"
        wait_for(lambda: (listed_room(base, token, "hall") or {}).get("placement") == "dedicated", timeout=60,
                 message="the directory says dedicated")
        wait_condition(kube, "chatroom", "hall", ns, reason="WorkersReady")
        assert any(e["reason"] == "Promoted" for e in events_of(kube, ns, "hall"))

        # Dedicated -> Pooled: the route and the directory go back to the pool first; its own workers go once the
        # front door has had its settle time to take the route.
        kube.apply(room(ns, "hall", placement="Pooled", title="Hall"))
        demoting = wait_for(lambda: (found := kube.get("chatroom", "hall", ns)) and
                            found["status"].get("placement") == "Demoting" and found["status"], timeout=60,
                            message="the room demoting")
        assert route_backend(kube, ns, "hall") == "demo-chat-pool"
        assert "deployment" in room_objects(kube, ns, "hall")
        pooled = wait_for(lambda: (found := kube.get("chatroom", "hall", ns)) and
                          found["status"].get("placement") == "Pooled" and found["status"], timeout=60,
                          message="the room pooled again")
        held = parse_time(pooled["placementChangedAt"]) - parse_time(demoting["placementChangedAt"])
        assert held.total_seconds() >= FRONT_DOOR_SETTLE_SECONDS, (demoting, pooled)
        assert (listed_room(base, token, "hall") or {}).get("placement") == "pooled"
        assert route_backend(kube, ns, "hall") == "demo-chat-pool"
        wait_for(lambda: room_objects(kube, ns, "hall") == ["ingress"], timeout=30, message="its own objects pruned")
        assert (kube.get("ingress", "chat-hall", ns) or {})["metadata"]["uid"] == route_uid, \
            "a move updates the room's route, never replaces it"
        wait_condition(kube, "chatroom", "hall", ns, reason="Pooled")
        assert any(e["reason"] == "Demoted" for e in events_of(kube, ns, "hall"))
    finally:
        operator.stop()
        api.stop()


class LoadFeed:
    """A room's RoomConnections snapshots on NATS, published every second as a chat replica does every 5 s."""

    def __init__(self, url: str, room: str) -> None:
        self.url, self.room = url, room
        self.connections = 0
        self.replica = uuid.uuid4().hex[:12]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._publish()), daemon=True)

    def __enter__(self) -> LoadFeed:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        self.thread.join(10)

    async def _publish(self) -> None:
        nc = await nats_client.connect(self.url)
        try:
            while not self.stopped.is_set():
                snapshot = {"v": 1, "room": self.room, "replica": self.replica, "connections": self.connections,
                            "messages_per_second": 0.0, "at": time.time()}
                await nc.publish(events.ROOM_CONNECTIONS.subject("demo", self.room), json.dumps(snapshot).encode())
                await nc.flush()
                await asyncio.sleep(1)
        finally:
            await nc.close()


@pytest.mark.kube
def test_the_autopilot_promotes_a_hot_auto_room_and_demotes_it_once_quiet(
        kube: KubeCluster, operator_install: Path, move_ns: str, placement_database: str, redis: RedisService,
        nats: NatsService, tmp_path: Path) -> None:
    ns = move_ns
    api = api_process(placement_database, redis, tmp_path, VEZA_NATS_URL=nats.url)
    base = api.url
    operator = operator_for(operator_install, ns, api, tmp_path)
    autopilot = {"promoteConnections": 10, "promoteMessagesPerSecond": 1000, "demoteBelowFraction": 0.5,
                 "coolDownSeconds": 0}
    try:
        with LoadFeed(nats.url, "arena") as feed:
            kube.apply(connections_secret(ns), platform(ns, chat={"autopilot": autopilot}), room(ns, "arena"))
            token = start_api_with_the_directory_token(kube, ns, api)
            r = wait_condition(kube, "chatroom", "arena", ns, reason="Pooled")
            assert r["status"]["placement"] == "Pooled"

            feed.connections = 7  # between the thresholds (5 and 10): it stays pooled
            time.sleep(4)  # the delay is what is tested: four load readings (VEZA_LOAD_INTERVAL_SECONDS=1)
            assert (kube.get("chatroom", "arena", ns) or {})["status"]["placement"] == "Pooled"

            feed.connections = 12  # hot: promoted, through Promoting, to its own workers
            wait_for(lambda: (kube.get("chatroom", "arena", ns) or {})["status"].get("placement") == "Dedicated",
                     timeout=60, message="the room promoted")
            assert room_objects(kube, ns, "arena") == ["deployment", "service", "ingress"]
            wait_for(lambda: (listed_room(base, token, "arena") or {}).get("placement") == "dedicated", timeout=30,
                     message="the directory says dedicated")
            promoted = [e for e in events_of(kube, ns, "arena") if e["reason"] == "Promoted"]
            assert promoted and "12 connections" in promoted[0]["message"], promoted

            feed.connections = 7  # above half the threshold: it stays
            time.sleep(4)  # as above: four load readings
            assert (kube.get("chatroom", "arena", ns) or {})["status"]["placement"] == "Dedicated"

            feed.connections = 2  # quiet: demoted, the directory first, then its own workers go
            wait_for(lambda: (kube.get("chatroom", "arena", ns) or {})["status"].get("placement") == "Pooled",
                     timeout=60, message="the room demoted")
            assert (listed_room(base, token, "arena") or {}).get("placement") == "pooled"
            wait_for(lambda: room_objects(kube, ns, "arena") == ["ingress"], timeout=30,
                     message="its own objects pruned")
            assert route_backend(kube, ns, "arena") == "demo-chat-pool"
            demoted = [e for e in events_of(kube, ns, "arena") if e["reason"] == "Demoted"]
            assert demoted and "2 connections" in demoted[0]["message"], demoted
    finally:
        operator.stop()
        api.stop()
