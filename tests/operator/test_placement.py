"""Where rooms run: the placement decision and its moves (pure), and pooled and dedicated rooms on a real API server."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
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
from veza_local.controlplane import wait_for
from veza_local.services import NatsService, PostgresService, RedisService
from veza_operator import platform as platform_mod
from veza_operator.models import ChatAutopilot, ChatPool, VezaPlatformSpec
from veza_operator.naming import Owner
from veza_operator.placement import (
    RoomLoad,
    declared,
    desired_placement,
    next_state,
    pool_replicas,
)
from veza_operator.wiring import worker_spec

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

def step(current: Any, target: Any, *, ready: bool = False, pooled: bool = False, has: bool = False) -> str:
    return next_state(current, target, dedicated_ready=ready, declared_pooled=pooled, has_dedicated=has)


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
                                                                                           pool_replicas=3)}
    pool = children[("Deployment", "demo-chat-pool")]
    container = pool["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["chat", "--pool"] and pool["spec"]["replicas"] == 3
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VEZA_COMPONENT"] == "chat" and env["VEZA_CHAT_MIGRATE"] == "0"
    assert "VEZA_RESOURCE_NAME" not in env and "VEZA_RESOURCE_SPEC" not in env
    labels = pool["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "chat" and labels["veza.io/platform"] == "demo"
    # The NetworkPolicies select the platform's pods: the pool's are among them, as a room's are.
    for policy in (c for (kind, _), c in children.items() if kind == "NetworkPolicy"
                   and c["metadata"]["name"] in ("demo-allow-http", "demo-allow-egress", "demo-default-deny")):
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ingress = children[("Ingress", "demo-chat-pool")]
    path = ingress["spec"]["rules"][0]["http"]["paths"][0]
    assert (path["path"], path["pathType"], path["backend"]["service"]["name"]) == ("/chat", "Prefix",
                                                                                    "demo-chat-pool")
    assert ("Service", "demo-chat-pool") in children and ("PodDisruptionBudget", "demo-chat-pool") in children
    one = platform_mod.build_children(owner, spec.model_copy(update={"chat": spec.chat.model_copy(update={
        "pool": ChatPool(minReplicas=1, maxReplicas=1)})}))
    assert not any(c["kind"] == "PodDisruptionBudget" and c["metadata"]["name"] == "demo-chat-pool" for c in one)


# -- against the API server ------------------------------------------------------------------------

ROOM_KINDS = ("deployment", "service", "ingress", "poddisruptionbudget", "horizontalpodautoscaler")


def room_objects(kube: KubeCluster, ns: str, name: str) -> list[str]:
    """The objects of a room's own workers that exist."""
    return [kind for kind in ROOM_KINDS if kube.get(kind, f"chat-{name}", ns) is not None]


@pytest.mark.kube
def test_a_pooled_room_and_a_dedicated_room_side_by_side(kube: KubeCluster, ns: str) -> None:
    kube.apply(connections_secret(ns), platform(ns), room(ns, "lounge"),
               room(ns, "stage", placement="Dedicated", replicas=2))
    lounge = wait_condition(kube, "chatroom", "lounge", ns, reason="Pooled")
    stage = wait_condition(kube, "chatroom", "stage", ns)
    assert lounge["status"]["placement"] == "Pooled" and lounge["status"]["url"] == "http://veza.test/chat/lounge"
    assert room_objects(kube, ns, "lounge") == [], "a pooled room adds no Deployment, Service or route"
    assert stage["status"]["placement"] == "Dedicated"
    assert room_objects(kube, ns, "stage") == ["deployment", "service", "ingress", "poddisruptionbudget"]

    pool = kube.get("deployment", "demo-chat-pool", ns)
    assert pool is not None and pool["spec"]["template"]["spec"]["containers"][0]["args"] == ["chat", "--pool"]
    assert kube.get("service", "demo-chat-pool", ns) is not None
    assert kube.get("poddisruptionbudget", "demo-chat-pool", ns) is not None
    ingress = kube.get("ingress", "demo-chat-pool", ns)
    assert ingress is not None and ingress["spec"]["rules"][0]["http"]["paths"][0]["path"] == "/chat"

    def pool_status() -> dict[str, Any] | None:
        found = ((kube.get("vezaplatform", "demo", ns) or {}).get("status") or {}).get("chatPool")
        return found if found and found.get("readyReplicas") == 2 and found.get("rooms") == 1 else None

    assert wait_for(pool_status, timeout=30, message="the platform reports its pool") == {
        "replicas": 2, "readyReplicas": 2, "rooms": 1}
    wait_condition(kube, "vezaplatform", "demo", ns)


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
def test_many_rooms_created_at_once_settle_pooled_with_no_objects_of_their_own(kube: KubeCluster, ns: str) -> None:
    # 1000 settle in about 80 s on a busy 2-core machine; 200 keep the suite's time down and show the same.
    count = 200
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
    assert objects_in(kube, ns) == before, "pooled rooms create no Deployment, Service, Ingress or PDB"
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
        assert r["status"]["placement"] == "Pooled" and room_objects(kube, ns, "hall") == []
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
        wait_for(lambda: (listed_room(base, token, "hall") or {}).get("placement") == "dedicated", timeout=60,
                 message="the directory says dedicated")
        wait_condition(kube, "chatroom", "hall", ns, reason="WorkersReady")
        assert any(e["reason"] == "Promoted" for e in events_of(kube, ns, "hall"))

        # Dedicated -> Pooled: the directory says pooled first, then its own workers go.
        kube.apply(room(ns, "hall", placement="Pooled", title="Hall"))
        wait_for(lambda: (kube.get("chatroom", "hall", ns) or {})["status"].get("placement") == "Pooled",
                 timeout=60, message="the room pooled again")
        assert (listed_room(base, token, "hall") or {}).get("placement") == "pooled"
        wait_for(lambda: room_objects(kube, ns, "hall") == [], timeout=30, message="its own objects pruned")
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
            wait_for(lambda: room_objects(kube, ns, "arena") == [], timeout=30, message="its own objects pruned")
            demoted = [e for e in events_of(kube, ns, "arena") if e["reason"] == "Demoted"]
            assert demoted and "2 connections" in demoted[0]["message"], demoted
    finally:
        operator.stop()
        api.stop()
