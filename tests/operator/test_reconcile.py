"""The operator against a real API server, running with the chart's least-privilege RBAC."""

from __future__ import annotations

import json
import time

import pytest

from tests.operator.conftest import (
    OPERATOR_USER,
    OperatorProcess,
    channel,
    condition,
    connections_secret,
    platform,
    room,
    wait_condition,
    writes_by,
)
from tests.support.kube import KubeCluster
from veza_local.controlplane import wait_for
from veza_operator.models import VezaPlatformSpec
from veza_operator.platform import migration_job_name

pytestmark = pytest.mark.kube


def deployment_replicas(kube: KubeCluster, name: str, ns: str) -> int | None:
    dep = kube.get("deployment", name, ns)
    return None if dep is None else dep["spec"]["replicas"]


def test_platform_room_and_channel_become_ready_with_their_children(kube: KubeCluster, ns: str) -> None:
    kube.apply(connections_secret(ns), platform(ns), room(ns, "general", replicas=2), channel(ns, "radio"))
    p = wait_condition(kube, "vezaplatform", "demo", ns)
    r = wait_condition(kube, "chatroom", "general", ns)
    c = wait_condition(kube, "streamchannel", "radio", ns)

    assert p["status"]["url"] == "http://veza.test" and p["status"]["keysSecret"] == "demo-jwt-keys"
    assert p["status"]["observedGeneration"] == p["metadata"]["generation"]
    assert {cond["type"] for cond in p["status"]["conditions"]} == {"Ready", "Progressing", "Degraded",
                                                                    "Reconciling", "Stalled"}
    wait_for(lambda: (kube.get("vezaplatform", "demo", ns) or {})["status"].get("rooms") == 1, timeout=20,
             message="platform counts its rooms")
    assert r["status"]["replicas"] == 2 and r["status"]["readyReplicas"] == 2
    assert r["status"]["url"] == "http://veza.test/chat/general"
    assert r["status"]["selector"].count("=") == 4
    assert c["status"]["url"] == "http://veza.test/stream/radio"

    for kind, name in [("deployment", "chat-general"), ("service", "chat-general"), ("ingress", "chat-general"),
                       ("poddisruptionbudget", "chat-general"), ("deployment", "stream-radio"),
                       ("deployment", "demo-api"), ("ingress", "demo"), ("networkpolicy", "demo-default-deny"),
                       ("secret", "demo-jwt-keys")]:
        obj = kube.get(kind, name, ns)
        assert obj is not None, f"{kind}/{name} missing"
        assert obj["metadata"]["ownerReferences"][0]["controller"] is True
    keys = kube.get("secret", "demo-jwt-keys", ns)
    assert keys is not None and set(keys["data"]) == {"jwks.json", "signing-keys.json"}
    events = json.loads(kube.kubectl("get", "events", "-n", ns, "-o", "json",
                                     "--field-selector", "involvedObject.kind=ChatRoom"))["items"]
    assert any(e["reason"] == "WorkersReady" for e in events), "a Ready transition is reported as an Event"


def test_no_writes_when_nothing_changes(kube: KubeCluster, ns: str, operator: OperatorProcess) -> None:
    if kube.plane is None:
        pytest.skip("counting write requests needs the local control plane's audit log")
    kube.apply(connections_secret(ns), platform(ns), room(ns, "quiet"), channel(ns, "still"))
    wait_condition(kube, "chatroom", "quiet", ns)
    wait_condition(kube, "streamchannel", "still", ns)
    wait_condition(kube, "vezaplatform", "demo", ns)
    time.sleep(4)  # let the last status echoes settle
    since = len(kube.plane.audit_events())
    time.sleep(10)  # three full resyncs (VEZA_RESYNC_SECONDS=3)
    # Peering keep-alives are the operator's heartbeat, not reconciles; other namespaces may be
    # shutting down from earlier tests (real changes): only this quiet namespace counts.
    writes = [w for w in writes_by(kube, OPERATOR_USER, since) if w["objectRef"].get("namespace") == ns]
    assert writes == [], [(w["verb"], w["objectRef"]) for w in writes]
    assert "veza_operator_reconciles_total" in operator.metrics()


def test_drift_is_reverted_and_deleted_children_come_back(kube: KubeCluster, ns: str) -> None:
    kube.apply(connections_secret(ns), platform(ns), room(ns, "drift", replicas=2))
    wait_condition(kube, "chatroom", "drift", ns)
    kube.kubectl("scale", "deployment", "chat-drift", "--replicas=5", "-n", ns)
    wait_for(lambda: deployment_replicas(kube, "chat-drift", ns) == 2, timeout=20, message="replicas reverted")
    kube.kubectl("delete", "service", "chat-drift", "-n", ns)
    wait_for(lambda: kube.get("service", "chat-drift", ns), timeout=20, message="service recreated")


def test_scale_subresource_and_autoscaler(kube: KubeCluster, ns: str) -> None:
    kube.apply(connections_secret(ns), platform(ns), room(ns, "scaled"))
    wait_condition(kube, "chatroom", "scaled", ns)
    kube.kubectl("scale", "chatroom", "scaled", "--replicas=3", "-n", ns)
    wait_for(lambda: deployment_replicas(kube, "chat-scaled", ns) == 3, timeout=20, message="scaled to 3")
    r = wait_condition(kube, "chatroom", "scaled", ns)
    wait_for(lambda: (kube.get("chatroom", "scaled", ns) or {})["status"].get("readyReplicas") == 3,
             timeout=30, message="3 ready replicas reported")
    assert r["spec"]["replicas"] == 3
    assert kube.get("poddisruptionbudget", "chat-scaled", ns) is not None

    kube.apply(room(ns, "scaled", replicas=2, autoscaling={"enabled": True, "minReplicas": 2, "maxReplicas": 5}))
    hpa = wait_for(lambda: kube.get("horizontalpodautoscaler", "chat-scaled", ns), timeout=20, message="HPA")
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "ChatRoom"
    kube.apply(room(ns, "scaled", replicas=1))
    wait_for(lambda: kube.get("horizontalpodautoscaler", "chat-scaled", ns) is None, timeout=20,
             message="HPA removed with autoscaling off")
    wait_for(lambda: kube.get("poddisruptionbudget", "chat-scaled", ns) is None, timeout=20,
             message="PDB removed at one replica")


def test_platform_change_rolls_every_room_and_channel(kube: KubeCluster, ns: str) -> None:
    kube.apply(connections_secret(ns), platform(ns), room(ns, "a"), room(ns, "b"), channel(ns, "c"))
    for kind, name in [("chatroom", "a"), ("chatroom", "b"), ("streamchannel", "c")]:
        wait_condition(kube, kind, name, ns)
    kube.apply(platform(ns, image={"tag": "9.9.9"}))

    def images() -> set[str]:
        return {kube.get("deployment", name, ns)["spec"]["template"]["spec"]["containers"][0]["image"]
                for name in ("chat-a", "chat-b", "stream-c", "demo-api")}

    wait_for(lambda: images() == {"ghcr.io/veza-platform/veza:9.9.9"}, timeout=30, message="all rolled")
    job = migration_job_name("demo", VezaPlatformSpec.model_validate(platform(ns, image={"tag": "9.9.9"})["spec"]))
    wait_for(lambda: kube.get("job", job, ns), timeout=20, message="migration Job of the new version")


def test_room_before_platform_heals_when_platform_appears(kube: KubeCluster, ns: str) -> None:
    kube.apply(room(ns, "early"))
    r = wait_condition(kube, "chatroom", "early", ns, status="False", reason="PlatformNotFound")
    assert condition(r, "Degraded")["status"] == "True" and condition(r, "Stalled")["status"] == "True"
    kube.apply(connections_secret(ns), platform(ns))
    wait_condition(kube, "chatroom", "early", ns)


def test_missing_secret_is_reported_and_heals(kube: KubeCluster, ns: str) -> None:
    kube.apply(platform(ns))
    p = wait_condition(kube, "vezaplatform", "demo", ns, status="False", reason="SecretNotFound")
    assert "veza-connections" in condition(p)["message"]
    kube.apply(connections_secret(ns))
    wait_condition(kube, "vezaplatform", "demo", ns, timeout=60)


def test_spec_the_schema_cannot_judge_is_reported_and_heals(kube: KubeCluster, ns: str) -> None:
    kube.apply(connections_secret(ns), platform(ns),
               channel(ns, "relay", source={"type": "relay", "relay": {"url": "http://evil.example/stream",
                                                                        "allowedHosts": ["radio.example"]}}))
    c = wait_condition(kube, "streamchannel", "relay", ns, status="False", reason="InvalidSpec")
    assert "evil.example" in condition(c)["message"]
    assert kube.get("deployment", "stream-relay", ns) is None, "nothing deployed for an invalid spec"
    kube.apply(channel(ns, "relay", source={"type": "relay", "relay": {"url": "http://radio.example/stream",
                                                                        "allowedHosts": ["radio.example"]}}))
    wait_condition(kube, "streamchannel", "relay", ns)


def test_deleting_a_room_deletes_its_children(kube: KubeCluster, ns: str) -> None:
    kube.apply(connections_secret(ns), platform(ns), room(ns, "gone"))
    wait_condition(kube, "chatroom", "gone", ns)
    kube.kubectl("delete", "chatroom", "gone", "-n", ns)
    wait_for(lambda: kube.get("deployment", "chat-gone", ns) is None and kube.get("service", "chat-gone", ns) is None,
             timeout=120, interval=1, message="children garbage-collected")


SERVICE_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
             "names": {"plural": "servicemonitors", "singular": "servicemonitor", "kind": "ServiceMonitor"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
}


def test_service_monitor_once_the_prometheus_operator_api_exists(kube: KubeCluster, ns: str,
                                                                 operator: OperatorProcess) -> None:
    kube.apply(connections_secret(ns), platform(ns))
    wait_condition(kube, "vezaplatform", "demo", ns)
    kube.apply(SERVICE_MONITOR_CRD)
    try:
        kube.kubectl("wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com",
                     "--timeout=30s")
        monitor = wait_for(lambda: kube.get("servicemonitors.monitoring.coreos.com", "demo-workers", ns),
                           timeout=30, message="ServiceMonitor created")
        assert monitor["spec"]["selector"]["matchLabels"]["veza.io/platform"] == "demo"
        assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
        kube.apply(platform(ns, observability={"metrics": {"enabled": True, "serviceMonitor": False}}))
        wait_for(lambda: kube.get("servicemonitors.monitoring.coreos.com", "demo-workers", ns) is None,
                 timeout=30, message="ServiceMonitor removed when switched off")
    finally:
        # An API vanishing under a running watch is fatal to kopf (it exits, and Kubernetes restarts the pod;
        # docs/operator.md): the operator the other tests share is restarted around the removal, as it would be.
        operator.stop()
        kube.kubectl("delete", "crd", "servicemonitors.monitoring.coreos.com", "--ignore-not-found")
        operator.start()


def test_delete_policy_purges_history_before_the_room_goes(kube: KubeCluster, ns: str) -> None:
    kube.apply(connections_secret(ns), platform(ns), room(ns, "ephemeral", deletionPolicy="Delete"),
               room(ns, "kept"))
    wait_condition(kube, "chatroom", "ephemeral", ns)
    r = kube.get("chatroom", "ephemeral", ns)
    assert r is not None and r["metadata"]["finalizers"] == ["veza.io/purge-history"]
    assert not (kube.get("chatroom", "kept", ns) or {})["metadata"].get("finalizers"), "Retain holds nothing"

    kube.kubectl("delete", "chatroom", "ephemeral", "-n", ns, "--wait=false")
    job_name = f"purge-ephemeral-{r['metadata']['uid'][:6]}"
    job = wait_for(lambda: kube.get("job", job_name, ns), timeout=20, message="purge Job started")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["chat", "--purge"]
    assert job["metadata"]["ownerReferences"][0]["kind"] == "VezaPlatform", "outlives the room"
    # kwok completes the Job's pod; then the finalizer goes and the room with it.
    wait_for(lambda: kube.get("chatroom", "ephemeral", ns) is None, timeout=60, message="room deleted")
    events = json.loads(kube.kubectl("get", "events", "-n", ns, "-o", "json"))["items"]
    assert any(e["reason"] == "HistoryPurged" for e in events)

    # Switching the policy back to Retain releases the finalizer.
    kube.apply(room(ns, "kept", deletionPolicy="Delete"))
    wait_for(lambda: (kube.get("chatroom", "kept", ns) or {})["metadata"].get("finalizers"), timeout=20,
             message="finalizer added")
    kube.apply(room(ns, "kept", deletionPolicy="Retain"))
    wait_for(lambda: not (kube.get("chatroom", "kept", ns) or {})["metadata"].get("finalizers"), timeout=20,
             message="finalizer removed")
