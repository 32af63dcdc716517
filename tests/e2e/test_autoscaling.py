"""Autoscaling that scales, on the cluster: KEDA installed from its release manifest (its operator and metrics
server as pods, the external metrics API behind the API server's aggregation layer), a Prometheus that scrapes the
platform's pods as they come and go, and the platform's `autoscaling.provider: KEDA`. Load applied through the front
door (WebSockets to a room) raises the room's replicas; load removed lowers them. The pool shard gets its
ScaledObject without losing a worker on the way (its replicas are handed over, not reset).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tests.support.e2e import Account, Platform, connect_chat
from tests.support.waiting import wait_for

from veza_local import keda
from veza_local.controlplane import wait_for as wait_until
from veza_local.node import NODE_IP
from veza_local.prometheus import PrometheusService, ScrapeTarget

ROOM = f"surge-{uuid.uuid4().hex[:6]}"
PER_REPLICA = 10  # connections per replica the room's ScaledObject aims for
SOCKETS = 25  # -> ceil(25 / 10) = 3 replicas
POOL = "demo-chat-pool"


def worker_targets(platform: Platform) -> list[ScrapeTarget]:
    """Every running worker pod of the platform, labelled as the chart's PodMonitor labels it."""
    targets = []
    for pod in platform.pods("veza.io/platform"):
        ip, labels = (pod.get("status") or {}).get("podIP"), pod["metadata"]["labels"]
        if ip and (pod.get("status") or {}).get("phase") == "Running":
            targets.append(ScrapeTarget("veza-workers", f"{ip}:8080", {
                "namespace": platform.namespace, "pod": pod["metadata"]["name"],
                "component": labels.get("app.kubernetes.io/component", ""), "platform": labels["veza.io/platform"]}))
    return targets


@pytest.fixture(scope="module")
def prometheus(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusService]:
    """On the node's address (KEDA's operator, a pod, queries it), its targets rediscovered every second."""
    stop = threading.Event()
    with PrometheusService(tmp_path_factory.mktemp("prometheus"), [], scrape_interval="2s", host=NODE_IP,
                           discovered=["veza-workers"]) as service:

        def rediscover() -> None:
            while not stop.wait(1.0):
                # A kubectl hiccup: the next round tries again.
                with contextlib.suppress(Exception):
                    service.discover("veza-workers", worker_targets(platform))

        service.discover("veza-workers", worker_targets(platform))
        thread = threading.Thread(target=rediscover, daemon=True)
        thread.start()
        try:
            yield service
        finally:
            stop.set()
            thread.join(timeout=10)


def platform_autoscaling(platform: Platform, value: dict[str, Any] | None) -> None:
    platform.kubectl("patch", "vezaplatform", "demo", "--type=merge", "-p",
                     json.dumps({"spec": {"autoscaling": value}}))


@pytest.fixture(scope="module")
def keda_platform(platform: Platform, prometheus: PrometheusService) -> Iterator[Platform]:
    """KEDA installed, the platform switched to it, one room that scales on its connections."""
    keda.install(platform.cluster)
    pool_pods = set(platform.ready_pods(f"app.kubernetes.io/instance={POOL}"))
    platform_autoscaling(platform, {"provider": "KEDA", "scaleDownStabilizationSeconds": 10,
                                    "keda": {"prometheusAddress": prometheus.url, "pollingIntervalSeconds": 5}})
    room = {"apiVersion": "veza.io/v1alpha1", "kind": "ChatRoom", "metadata": {"name": ROOM},
            "spec": {"platformRef": {"name": "demo"}, "title": "Surge", "placement": "Dedicated", "replicas": 1,
                     "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3,
                                     "targetConnectionsPerReplica": PER_REPLICA}}}
    platform.kubectl("apply", "-f", "-", input=json.dumps(room))
    try:
        platform.wait_ready(f"chatroom/{ROOM}", timeout=240)
        wait_until(lambda: scaled_object_ready(platform, POOL) and scaled_object_ready(platform, f"chat-{ROOM}"),
                   timeout=120, interval=1, message="KEDA's ScaledObjects Ready")
        # The pool shard's workers were handed over to KEDA, not reset to one and back: the same pods serve.
        assert set(platform.ready_pods(f"app.kubernetes.io/instance={POOL}")) == pool_pods
        yield platform
    finally:
        platform.kubectl("delete", "chatroom", ROOM, "--wait=false", check=False)
        platform_autoscaling(platform, None)
        wait_until(lambda: not platform.kubectl("get", "scaledobjects", "-o", "name", check=False).strip(),
                   timeout=120, interval=1, message="the ScaledObjects pruned")


def scaled_object_ready(platform: Platform, name: str) -> bool:
    found = platform.kubectl("get", "scaledobject", name, "-o",
                             "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)
    return found.strip() == "True"


def replicas(platform: Platform) -> tuple[int, int]:
    """The room's `.spec.replicas` (KEDA's HPA writes it through the scale subresource) and its ready pods."""
    body = json.loads(platform.kubectl("get", "chatroom", ROOM, "-o", "json"))
    return body["spec"].get("replicas", 1), len(platform.ready_pods(f"app.kubernetes.io/instance=chat-{ROOM}"))


def scaled_to(platform: Platform, count: int) -> bool:
    return replicas(platform) == (count, count)


async def test_load_through_the_front_door_raises_the_replicas_and_its_end_lowers_them(
        keda_platform: Platform, prometheus: PrometheusService, tmp_path: Path) -> None:
    platform = keda_platform
    # KEDA made the HPA, named as the ScaledObject asks, on the room's scale subresource: none of the operator's.
    hpa = json.loads(platform.kubectl("get", "hpa", f"chat-{ROOM}", "-o", "json"))
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "veza.io/v1alpha1", "kind": "ChatRoom", "name": ROOM}
    assert hpa["metadata"]["ownerReferences"][0]["kind"] == "ScaledObject"
    assert replicas(platform) == (1, 1)

    async with aiohttp.ClientSession() as session:
        tokens = [await (await Account(platform, f"Surge{i}").register(session)).service_token(session, "veza-chat")
                  for i in range(5)]
    clients = [await connect_chat(platform, tokens[i % len(tokens)], room=ROOM, attempts=10) for i in range(SOCKETS)]
    timeline: dict[str, float] = {}
    try:
        loaded = time.monotonic()
        query = f'sum(veza_chat_connections{{namespace="{platform.namespace}",pod=~"chat-{ROOM}-.+"}})'

        async def counted() -> bool:
            samples = await asyncio.to_thread(prometheus.query, query)
            return bool(samples) and float(samples[0]["value"][1]) >= SOCKETS

        await wait_for(counted, timeout=60, interval=1, message="Prometheus counts the sockets")
        timeline["scraped"] = time.monotonic() - loaded
        await wait_for(lambda: asyncio.to_thread(scaled_to, platform, 3), timeout=240, interval=2,
                       message="the room scaled to 3 ready replicas")
        timeline["scaled_up"] = time.monotonic() - loaded
        # Every client still has its socket: scaling up moved nobody.
        cid = uuid.uuid4().hex
        await clients[0].send({"type": "send", "cid": cid, "text": "still here"})
        seq = (await clients[0].expect("ack", cid=cid))["seq"]
        assert (await clients[-1].expect("event", seq=seq))["text"] == "still here"
    finally:
        for client in clients:
            await client.close()
    unloaded = time.monotonic()
    # Down one pod a minute once 10 s of calm have passed (the platform's scaleDownStabilizationSeconds).
    await wait_for(lambda: asyncio.to_thread(scaled_to, platform, 1), timeout=300, interval=2,
                   message="the room back to 1 replica")
    timeline["scaled_down"] = time.monotonic() - unloaded
    print(f"autoscaling: {json.dumps({k: round(v, 1) for k, v in timeline.items()})}")
    # The pool shard kept its floor under KEDA: minReplicas, all ready.
    pool = json.loads(platform.kubectl("get", "deployment", POOL, "-o", "json"))
    assert pool["spec"]["replicas"] >= 2 and (pool.get("status") or {}).get("readyReplicas") == pool["spec"]["replicas"]
