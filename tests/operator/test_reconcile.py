"""The operator against a real API server, running with the chart's least-privilege RBAC."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.kube import KubeCluster
from tests.support.operator import (
    OPERATOR_USER,
    OperatorProcess,
    channel,
    condition,
    connections_secret,
    platform,
    quiet,
    resync_rounds,
    room,
    wait_condition,
    writes_by,
)
from veza_local.controlplane import wait_for
from veza_operator import platform as platform_mod
from veza_operator.models import VezaPlatformSpec
from veza_operator.naming import OWNER_KIND, OWNER_NAME, Owner
from veza_operator.platform import migration_job_name

pytestmark = pytest.mark.kube


def deployment_replicas(kube: KubeCluster, name: str, ns: str) -> int | None:
    dep = kube.get("deployment", name, ns)
    return None if dep is None else dep["spec"]["replicas"]


def test_platform_room_and_channel_become_ready_with_their_children(kube: KubeCluster, ns: str) -> None:
    kube.apply(connections_secret(ns), platform(ns), room(ns, "general", replicas=2, placement="Dedicated"),
               channel(ns, "radio"))
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
    kube.apply(connections_secret(ns), platform(ns), room(ns, "quiet", placement="Dedicated"), channel(ns, "still"))
    wait_condition(kube, "chatroom", "quiet", ns)
    wait_condition(kube, "streamchannel", "still", ns)
    wait_condition(kube, "vezaplatform", "demo", ns)
    since = quiet(kube, ns)  # the last status echoes settled
    resync_rounds(kube, operator, 2)  # every resource reconciled again, twice (VEZA_RESYNC_SECONDS=3)
    # Peering keep-alives are the operator's heartbeat, not reconciles; other namespaces may be
    # shutting down from earlier tests (real changes): only this quiet namespace counts.
    writes = [w for w in writes_by(kube, OPERATOR_USER, since) if w["objectRef"].get("namespace") == ns]
    assert writes == [], [(w["verb"], w["objectRef"]) for w in writes]
    assert "veza_operator_reconciles_total" in operator.metrics()


def test_drift_is_reverted_and_deleted_children_come_back(kube: KubeCluster, ns: str) -> None:
    kube.apply(connections_secret(ns), platform(ns), room(ns, "drift", replicas=2, placement="Dedicated"))
    wait_condition(kube, "chatroom", "drift", ns)
    kube.kubectl("scale", "deployment", "chat-drift", "--replicas=5", "-n", ns)
    wait_for(lambda: deployment_replicas(kube, "chat-drift", ns) == 2, timeout=20, message="replicas reverted")
    kube.kubectl("delete", "service", "chat-drift", "-n", ns)
    wait_for(lambda: kube.get("service", "chat-drift", ns), timeout=20, message="service recreated")


def test_scale_subresource_and_autoscaler(kube: KubeCluster, ns: str) -> None:
    kube.apply(connections_secret(ns), platform(ns), room(ns, "scaled", placement="Dedicated"))
    wait_condition(kube, "chatroom", "scaled", ns)
    kube.kubectl("scale", "chatroom", "scaled", "--replicas=3", "-n", ns)
    wait_for(lambda: deployment_replicas(kube, "chat-scaled", ns) == 3, timeout=20, message="scaled to 3")
    r = wait_condition(kube, "chatroom", "scaled", ns)
    wait_for(lambda: (kube.get("chatroom", "scaled", ns) or {})["status"].get("readyReplicas") == 3,
             timeout=30, message="3 ready replicas reported")
    assert r["spec"]["replicas"] == 3
    assert kube.get("poddisruptionbudget", "chat-scaled", ns) is not None

    kube.apply(room(ns, "scaled", placement="Dedicated", replicas=2,
                    autoscaling={"enabled": True, "minReplicas": 2, "maxReplicas": 5}))
    hpa = wait_for(lambda: kube.get("horizontalpodautoscaler", "chat-scaled", ns), timeout=20, message="HPA")
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "ChatRoom"
    kube.apply(room(ns, "scaled", placement="Dedicated", replicas=1))
    wait_for(lambda: kube.get("horizontalpodautoscaler", "chat-scaled", ns) is None, timeout=20,
             message="HPA removed with autoscaling off")
    wait_for(lambda: kube.get("poddisruptionbudget", "chat-scaled", ns) is None, timeout=20,
             message="PDB removed at one replica")


def test_platform_change_rolls_every_room_and_channel(kube: KubeCluster, ns: str) -> None:
    kube.apply(connections_secret(ns), platform(ns), room(ns, "a", placement="Dedicated"),
               room(ns, "b", placement="Dedicated"), channel(ns, "c"))
    for kind, name in [("chatroom", "a"), ("chatroom", "b"), ("streamchannel", "c")]:
        wait_condition(kube, kind, name, ns)
    # The first image's migration has run (until then workers take the spec's image at once, as at install).
    wait_for(lambda: ((kube.get("vezaplatform", "demo", ns) or {}).get("status") or {}).get("workerImage"),
             timeout=30, message="first migration recorded")
    kube.apply(platform(ns, image={"tag": "9.9.9"}))

    def images() -> set[str]:
        return {kube.get("deployment", name, ns)["spec"]["template"]["spec"]["containers"][0]["image"]
                for name in ("chat-a", "chat-b", "stream-c", "demo-api")}

    # kwok completes the new migration Job at once; then the workers roll to the migrated image.
    wait_for(lambda: images() == {"ghcr.io/veza-platform/veza:9.9.9"}, timeout=30, message="all rolled")
    job = migration_job_name("demo", VezaPlatformSpec.model_validate(platform(ns, image={"tag": "9.9.9"})["spec"]))
    assert (kube.get("job", job, ns) or {}).get("status", {}).get("succeeded") == 1
    status = (kube.get("vezaplatform", "demo", ns) or {})["status"]
    assert (status["workerImage"], status["migratedVersion"]) == ("ghcr.io/veza-platform/veza:9.9.9", "9.9.9")


WORKERS = ("demo-api", "chat-a", "stream-c")


def worker_templates(kube: KubeCluster, ns: str) -> dict[str, tuple[str, int]]:
    """Each worker Deployment's image and generation (a template change bumps it)."""
    out = {}
    for name in WORKERS:
        dep = kube.get("deployment", name, ns)
        assert dep is not None, name
        out[name] = (dep["spec"]["template"]["spec"]["containers"][0]["image"], dep["metadata"]["generation"])
    return out


def hold_migration(kube: KubeCluster, ns: str, tag: str) -> str:
    """Create the migration Job of `tag` before the operator does, suspended: a migration still running.

    kwok completes Job pods at once. This is the Job the operator builds, without its owner labels
    (until the platform asks for it the operator would prune a Job labelled as its own): the operator
    adds them by applying its manifest, leaves `suspend` alone, and the test decides when the
    migration succeeds or fails.
    """
    body = kube.get("vezaplatform", "demo", ns)
    assert body is not None
    spec = VezaPlatformSpec.model_validate(platform(ns, image={"tag": tag})["spec"])
    job = next(c for c in platform_mod.build_children(Owner.of(body), spec) if c["kind"] == "Job")
    for label in (OWNER_KIND, OWNER_NAME):
        del job["metadata"]["labels"][label]
    job["spec"]["suspend"] = True
    kube.apply(job)
    return str(job["metadata"]["name"])


def test_an_upgrade_migrates_before_any_worker_rolls(kube: KubeCluster, ns: str, operator: OperatorProcess) -> None:
    old, new, newer = (f"ghcr.io/veza-platform/veza:{tag}" for tag in ("0.1.0", "9.9.9", "9.9.10"))
    kube.apply(connections_secret(ns), platform(ns), room(ns, "a", placement="Dedicated"), channel(ns, "c"))
    for kind, name in [("chatroom", "a"), ("streamchannel", "c"), ("vezaplatform", "demo")]:
        wait_condition(kube, kind, name, ns)
    assert (kube.get("vezaplatform", "demo", ns) or {})["status"]["workerImage"] == old
    before = worker_templates(kube, ns)
    assert {image for image, _ in before.values()} == {old}

    # The new image's migration Job runs; every worker stays on the migrated image, still Ready.
    job = hold_migration(kube, ns, "9.9.9")
    kube.apply(platform(ns, image={"tag": "9.9.9"}))

    def migrating() -> dict[str, Any] | None:
        p = kube.get("vezaplatform", "demo", ns)
        cond = condition(p, "Progressing")
        return p if cond and (cond["status"], cond["reason"]) == ("True", "Migrating") else None

    p = wait_for(migrating, timeout=30, message="platform Progressing=True Migrating")
    assert new in condition(p, "Progressing")["message"] and old in condition(p, "Progressing")["message"]
    assert (condition(p)["status"], condition(p)["reason"]) == ("True", "WorkersReady"), "users are served"
    assert condition(p, "Degraded")["status"] == "False"
    assert p["status"]["workerImage"] == old and p["status"]["migratedVersion"] == "0.1.0"
    assert worker_templates(kube, ns) == before
    assert (kube.get("job", job, ns) or {})["spec"]["template"]["spec"]["containers"][0]["image"] == new
    # Resyncs while the migration runs change nothing and write nothing.
    if kube.plane is not None:
        since = quiet(kube, ns)
        resync_rounds(kube, operator, 2)
        writes = [w for w in writes_by(kube, OPERATOR_USER, since) if w["objectRef"].get("namespace") == ns]
        assert writes == [], [(w["verb"], w["objectRef"]) for w in writes]
    assert worker_templates(kube, ns) == before
    for kind, name in [("chatroom", "a"), ("streamchannel", "c")]:
        assert condition(kube.get(kind, name, ns))["status"] == "True"

    # The migration succeeds: the platform records the image, then the API and every room and channel roll.
    kube.kubectl("patch", "job", job, "-n", ns, "--type=merge", "-p", '{"spec": {"suspend": false}}')
    wait_for(lambda: {image for image, _ in worker_templates(kube, ns).values()} == {new}, timeout=30,
             message="every worker on the migrated image")
    assert (kube.get("job", job, ns) or {})["status"].get("succeeded") == 1
    p = wait_condition(kube, "vezaplatform", "demo", ns)
    assert (p["status"]["workerImage"], p["status"]["migratedVersion"]) == (new, "9.9.9")
    assert condition(p, "Progressing")["status"] == "False"
    rolled = worker_templates(kube, ns)

    # A failed migration leaves every worker on the image migrated last.
    failing = hold_migration(kube, ns, "9.9.10")
    kube.apply(platform(ns, image={"tag": "9.9.10"}))
    wait_for(migrating, timeout=30, message="platform Progressing=True Migrating")
    kube.kubectl("patch", "job", failing, "-n", ns, "--subresource=status", "--type=merge",
                 "-p", '{"status": {"failed": 7}}')
    p = wait_condition(kube, "vezaplatform", "demo", ns, status="False", reason="MigrationFailed")
    assert newer in condition(p)["message"] and new in condition(p)["message"]
    assert condition(p, "Degraded")["status"] == "True"
    assert p["status"]["workerImage"] == new
    resync_rounds(kube, operator, 1)  # what a resync does after the failure
    assert worker_templates(kube, ns) == rolled


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
    kube.apply(connections_secret(ns), platform(ns), room(ns, "gone", placement="Dedicated"))
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
