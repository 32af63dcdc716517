"""Which object scales which workers (autoscaling provider HPA or KEDA): pure builders, no cluster. The KEDA
ScaledObjects at work, on real pods through the front door: tests/e2e/test_autoscaling.py."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from tests.support.kube import KubeCluster
from tests.support.operator import condition, connections_secret, platform, room, wait_condition
from veza_core.specs import ChatRoomSpec, StreamChannelSpec
from veza_operator import platform as platform_mod
from veza_operator.autoscaling import load_query, pods_of
from veza_operator.chatroom import CHAT_WORKERS
from veza_operator.controller import Store
from veza_operator.models import VezaPlatformSpec
from veza_operator.naming import Owner
from veza_operator.streamchannel import STREAM_WORKERS
from veza_operator.workers import build_children

PROMETHEUS = "http://prometheus.monitoring.svc:9090"


def platform_with(autoscaling: dict[str, Any] | None = None, **pool: Any) -> VezaPlatformSpec:
    raw = platform("ns")["spec"]
    if autoscaling is not None:
        raw["autoscaling"] = autoscaling
    if pool:
        raw["chat"] = {"pool": pool}
    return VezaPlatformSpec.model_validate(raw)


KEDA = {"provider": "KEDA", "keda": {"prometheusAddress": PROMETHEUS, "pollingIntervalSeconds": 5},
        "scaleDownStabilizationSeconds": 20}
ROOM = {"platformRef": {"name": "demo"}, "replicas": 1,
        "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 5, "targetConnectionsPerReplica": 50}}


def room_children(spec: VezaPlatformSpec, *, scaled_objects: bool) -> dict[str, dict[str, Any]]:
    owner = Owner("ChatRoom", "general", "ns", "uid-1")
    children = build_children(CHAT_WORKERS, owner, ChatRoomSpec.model_validate(ROOM), ROOM, "demo", spec,
                              scaled_objects=scaled_objects)
    return {c["kind"]: c for c in children}


def test_a_room_under_keda_gets_a_scaled_object_on_its_scale_subresource_and_no_hpa_of_ours() -> None:
    children = room_children(platform_with(KEDA), scaled_objects=True)
    assert "HorizontalPodAutoscaler" not in children
    scaled = children["ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1" and scaled["metadata"]["name"] == "chat-general"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "veza.io/v1alpha1", "kind": "ChatRoom", "name": "general"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"], spec["pollingInterval"]) == (1, 5, 5)
    hpa = spec["advanced"]["horizontalPodAutoscalerConfig"]
    assert hpa["name"] == "chat-general"
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 20
    [trigger] = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"] == {
        "serverAddress": PROMETHEUS, "threshold": "50", "ignoreNullValues": "true",
        "query": 'sum(veza_chat_connections{namespace="ns",pod=~"chat-general-[a-z0-9]+-[a-z0-9]+"})'}
    # The room's own replicas stay the custom resource's: the Deployment copies them.
    assert children["Deployment"]["spec"]["replicas"] == 1


def test_keda_not_served_makes_no_autoscaler_and_hpa_stays_the_default() -> None:
    assert not {"ScaledObject", "HorizontalPodAutoscaler"} & set(room_children(platform_with(KEDA),
                                                                                scaled_objects=False))
    children = room_children(platform_with(), scaled_objects=False)
    assert "ScaledObject" not in children
    hpa = children["HorizontalPodAutoscaler"]["spec"]
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


def test_a_channel_under_keda_scales_on_its_listeners() -> None:
    raw = {"platformRef": {"name": "demo"}, "source": {"type": "live"},
           "autoscaling": {"enabled": True, "maxReplicas": 3, "targetListenersPerReplica": 400}}
    children = build_children(STREAM_WORKERS, Owner("StreamChannel", "radio", "ns", "u"),
                              StreamChannelSpec.model_validate(raw), raw, "demo", platform_with(KEDA),
                              scaled_objects=True)
    [scaled] = [c for c in children if c["kind"] == "ScaledObject"]
    assert scaled["spec"]["scaleTargetRef"]["kind"] == "StreamChannel"
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["metadata"]["query"] == load_query("veza_stream_listeners", "ns", "stream-radio")
    assert trigger["metadata"]["threshold"] == "400"


def test_pool_shards_under_keda_leave_their_replicas_to_it() -> None:
    owner = Owner("VezaPlatform", "demo", "ns", "u")
    spec = platform_with(KEDA, shards=2, minReplicas=2, maxReplicas=8, targetConnectionsPerWorker=3000,
                         targetRoomsPerWorker=500)
    children = platform_mod.build_children(owner, spec, scaled_objects=True)
    pools = {c["metadata"]["name"]: c for c in children
             if c["kind"] == "Deployment" and "pool" in c["metadata"]["name"]}
    assert set(pools) == {"demo-chat-pool-0", "demo-chat-pool-1"}
    assert all("replicas" not in d["spec"] for d in pools.values()), "KEDA's HPA owns them"
    scaled = {c["metadata"]["name"]: c for c in children if c["kind"] == "ScaledObject"}
    assert set(scaled) == set(pools)
    shard = scaled["demo-chat-pool-1"]["spec"]
    assert shard["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "demo-chat-pool-1"}
    assert (shard["minReplicaCount"], shard["maxReplicaCount"]) == (2, 8)
    assert {t["name"]: t["metadata"]["threshold"] for t in shard["triggers"]} == {"connections": "3000",
                                                                                   "rooms": "500"}
    assert {c["metadata"]["name"] for c in children if c["kind"] == "PodDisruptionBudget"} >= set(pools)
    # Under HPA the operator sizes the shards: replicas are set, no ScaledObject.
    plain = platform_mod.build_children(owner, platform_with(shards=2), pool_replicas=[3, 2])
    assert [c["spec"]["replicas"] for c in plain if c["kind"] == "Deployment" and "pool" in c["metadata"]["name"]] == [
        3, 2]
    assert not [c for c in plain if c["kind"] == "ScaledObject"]


def test_keda_needs_its_prometheus() -> None:
    with pytest.raises(ValidationError, match=r"keda\.prometheusAddress"):
        platform_with({"provider": "KEDA"})
    with pytest.raises(ValidationError):
        platform_with({"provider": "KEDA", "keda": {"prometheusAddress": "prometheus:9090"}})


@pytest.mark.parametrize(("pod", "matches"), [
    ("chat-general-7d9f8c6b5-x2x9q", True),
    ("chat-general-2-7d9f8c6b5-x2x9q", False),  # room general-2's pods are not room general's
    ("chat-general-x2x9q", False),
    ("xchat-general-7d9f8c6b5-x2x9q", False),
])
def test_the_query_selects_one_deployments_pods(pod: str, matches: bool) -> None:
    assert bool(re.fullmatch(pods_of("chat-general"), pod)) is matches


def test_the_hpa_keda_makes_is_never_pruned_as_ours() -> None:
    """KEDA copies the ScaledObject's labels (ours) to its HPA; its controller is the ScaledObject, so the room's
    reconcile does not take it for a child of its own to prune."""
    [scaled] = [c for c in room_children(platform_with(KEDA), scaled_objects=True).values()
                if c["kind"] == "ScaledObject"]
    store = Store()
    store.put_child(scaled)
    keda_hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": "chat-general", "namespace": "ns", "labels": dict(scaled["metadata"]["labels"]),
                             "ownerReferences": [{"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
                                                  "name": "chat-general", "uid": "so", "controller": True}]}}
    store.put_child(keda_hpa)
    assert [c["kind"] for c in store.owned_by(("ChatRoom", "ns", "general"))] == ["ScaledObject"]


def test_keda_asked_for_where_the_cluster_has_none_is_reported_and_holds_nothing_back(kube: KubeCluster,
                                                                                      ns: str) -> None:
    """On the operator tests' control plane (no KEDA): the platform and its autoscaled room say why nothing scales
    them; the workers, routes and the pool (sized by the operator meanwhile) are all there."""
    if kube.kubectl("api-resources", "--api-group=keda.sh", "-o", "name", check=False).strip():
        pytest.skip("the cluster serves KEDA")
    kube.apply(connections_secret(ns), platform(ns, autoscaling=KEDA),
               room(ns, "lobby", placement="Dedicated", autoscaling=ROOM["autoscaling"]))
    found = wait_condition(kube, "vezaplatform", "demo", ns, status="False", reason="AutoscalerNotInstalled")
    assert condition(found, "Degraded")["status"] == "True" and "install KEDA" in condition(found)["message"]
    wait_condition(kube, "chatroom", "lobby", ns, status="False", reason="AutoscalerNotInstalled")
    for kind, name in [("deployment", "chat-lobby"), ("ingress", "chat-lobby"), ("ingress", "demo")]:
        assert kube.get(kind, name, ns) is not None, f"{kind}/{name} missing"
    pool = kube.get("deployment", "demo-chat-pool", ns)
    assert pool is not None and pool["spec"]["replicas"] == 2, "the operator sizes the pool while KEDA cannot"
    assert kube.get("horizontalpodautoscaler", "chat-lobby", ns) is None
