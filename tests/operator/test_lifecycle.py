"""The operator's lifecycle at its default resync (600 s): restarts and failovers write nothing,
a deleted platform is noticed at once, a re-created one heals its rooms and channels, and a first
`kubectl apply -f examples/` raises no Warning.

Each test runs replicas of its own with the default resync, so that nothing here is hidden by a
resync coming round (the shared test operator resyncs every 3 s).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kube import KubeCluster
from tests.support.operator import (
    OPERATOR_USER,
    REPO,
    ConditionWatch,
    OperatorProcess,
    channel,
    connections_secret,
    platform,
    quiet,
    ready_states,
    room,
    wait_condition,
    writes_by,
)
from veza_local.controlplane import wait_for

pytestmark = pytest.mark.kube

ROOMS = CHANNELS = 50


@pytest.fixture
def replicas(operator_install: Path, tmp_path: Path, operator_stepped_aside: None) -> Iterator[list[OperatorProcess]]:
    """Start replicas at the default resync with `start(name)`; all are stopped afterwards."""
    started: list[OperatorProcess] = []
    yield started
    for replica in started:
        replica.stop()


def start(replicas: list[OperatorProcess], operator_install: Path, tmp_path: Path, name: str) -> OperatorProcess:
    replica = OperatorProcess(operator_install, tmp_path / f"{name}.log",
                              extra_env={"POD_ID": name, "VEZA_RESYNC_SECONDS": "600"})
    replicas.append(replica.start())
    return replica


def all_ready(kube: KubeCluster, ns: str, count: int) -> bool:
    states = ready_states(kube, ns)
    return len(states) == count and all(status == "True" for status, _ in states.values())


# The kube-apiserver's own bookkeeping, about no object's content: its ClusterIP repair loop (every 3 min) can
# race a Service being created and report the Service's fresh address as "not allocated; repairing"
# (kubernetes/kubernetes#87603, #93199).
APISERVER_REPAIRS = frozenset({"ClusterIPNotAllocated"})


def warnings(kube: KubeCluster, ns: str) -> list[str]:
    events = json.loads(kube.kubectl("get", "events", "-n", ns, "-o", "json",
                                     "--field-selector", "type=Warning"))["items"]
    return [f"{e['involvedObject']['kind']}/{e['involvedObject']['name']}: {e['reason']}: {e['message']}"
            for e in events if e["reason"] not in APISERVER_REPAIRS]


def test_a_restart_or_a_failover_writes_nothing(kube: KubeCluster, operator_install: Path, tmp_path: Path,
                                               replicas: list[OperatorProcess]) -> None:
    if kube.plane is None:
        pytest.skip("counting write requests needs the local control plane's audit log")
    first = start(replicas, operator_install, tmp_path, "life-a")
    ns = kube.create_namespace("life")
    kube.apply(connections_secret(ns), platform(ns), *[room(ns, f"room-{i}") for i in range(ROOMS)],
               *[channel(ns, f"chan-{i}") for i in range(CHANNELS)])
    owners = 1 + ROOMS + CHANNELS
    wait_for(lambda: all_ready(kube, ns, owners), timeout=240, interval=1, message="every resource Ready")
    since = quiet(kube, ns)
    before = ready_states(kube, ns)

    with ConditionWatch(kube, ns) as watch:
        # A restart: killed without notice, started again. The new process stands by until the
        # killed one's peering record expires (VEZA_PEERING_LIFETIME=6 s), then takes over.
        first.stop(signal.SIGKILL)
        second = start(replicas, operator_install, tmp_path, "life-b")
        wait_for(lambda: second.reconciles() >= owners, timeout=90, message="the restarted replica reconciled all")

        # A failover: a standby joins; whichever of the two is active is killed; the other takes over.
        third = start(replicas, operator_install, tmp_path, "life-c")
        wait_for(lambda: second.standing_by() != third.standing_by(), timeout=30, message="one active, one standby")
        victim, survivor = (second, third) if third.standing_by() else (third, second)
        baseline = survivor.reconciles()
        victim.stop(signal.SIGKILL)
        wait_for(lambda: survivor.reconciles() - baseline >= owners, timeout=90,
                 message="the standby took over and reconciled all")
        time.sleep(2)  # what a reconcile wrote would reach the audit log and the watch by now

    writes = [w for w in writes_by(kube, OPERATOR_USER, since) if w["objectRef"].get("namespace") == ns]
    assert writes == [], [(w["verb"], w["objectRef"].get("resource"), w["objectRef"].get("name")) for w in writes]
    assert ready_states(kube, ns) == before
    assert watch.changes() == [], "a watch saw conditions change"


def test_a_deleted_platform_is_noticed_at_once_and_a_recreated_one_heals(
        kube: KubeCluster, operator_install: Path, tmp_path: Path, replicas: list[OperatorProcess]) -> None:
    start(replicas, operator_install, tmp_path, "plat-a")
    ns = kube.create_namespace("plat")
    kube.apply(connections_secret(ns), platform(ns), room(ns, "general", placement="Dedicated"),
               channel(ns, "radio"))
    wait_for(lambda: all_ready(kube, ns, 3), timeout=120, interval=0.5, message="every resource Ready")

    kube.kubectl("delete", "vezaplatform", "demo", "-n", ns, "--wait=false")
    deleted = time.monotonic()
    for kind, name in (("chatroom", "general"), ("streamchannel", "radio")):
        wait_condition(kube, kind, name, ns, status="False", reason="PlatformNotFound", timeout=5)
    assert time.monotonic() - deleted < 5
    reasons = [w.split(": ")[1] for w in warnings(kube, ns)]
    assert reasons.count("PlatformNotFound") == 2, warnings(kube, ns)
    # The workers are left running: a platform deleted by mistake does not drop every connection.
    for name in ("chat-general", "stream-radio"):
        assert kube.get("deployment", name, ns) is not None

    wait_for(lambda: kube.get("vezaplatform", "demo", ns) is None, timeout=30, message="the platform gone")
    kube.apply(platform(ns))
    wait_condition(kube, "vezaplatform", "demo", ns, timeout=60)
    platform_ready = time.monotonic()
    for kind, name in (("chatroom", "general"), ("streamchannel", "radio")):
        wait_condition(kube, kind, name, ns, timeout=10)
    assert time.monotonic() - platform_ready < 10


def test_applying_the_examples_raises_no_warning_and_alert_series_start_at_zero(
        kube: KubeCluster, operator_install: Path, tmp_path: Path, replicas: list[OperatorProcess]) -> None:
    replica = start(replicas, operator_install, tmp_path, "examples-a")
    # The series the alerts read exist at 0 from start-up (an alert on a missing one reads "no data").
    metrics = replica.metrics()
    for kind in ("VezaPlatform", "ChatRoom", "StreamChannel"):
        assert f'veza_operator_retries_total{{kind="{kind}"}} 0.0' in metrics
        assert f'veza_operator_reconciles_total{{kind="{kind}",result="error"}} 0.0' in metrics
    ns = kube.create_namespace("examples")
    kube.kubectl("apply", "-n", ns, "-f", str(REPO / "examples"))
    wait_for(lambda: all_ready(kube, ns, 3), timeout=120, interval=0.5, message="every example Ready")
    assert warnings(kube, ns) == []
