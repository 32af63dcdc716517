"""Pure builders: spec in, manifests out (no cluster)."""

from __future__ import annotations

import json
from typing import Any

from tests.operator.conftest import platform
from veza_operator import platform as platform_mod
from veza_operator.chatroom import CHAT_ROOM
from veza_operator.controller import Store
from veza_operator.kube import is_subset
from veza_operator.models import ChatRoomSpec, VezaPlatformSpec
from veza_operator.naming import Owner
from veza_operator.streamchannel import STREAM_CHANNEL
from veza_operator.wiring import SecretValue, resolve_env, worker_env
from veza_operator.workers import build_children

PLATFORM = VezaPlatformSpec.model_validate(platform("ns")["spec"])
ROOM_OWNER = Owner("ChatRoom", "general", "ns", "uid-1")


def by_kind(children: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["kind"]: c for c in children}


def room_children(**spec: Any) -> dict[str, dict[str, Any]]:
    raw = {"platformRef": {"name": "demo"}, **spec}
    return by_kind(build_children(CHAT_ROOM, ROOM_OWNER, ChatRoomSpec.model_validate(raw), raw, "demo", PLATFORM))


def test_room_gets_deployment_service_and_ingress_route() -> None:
    children = room_children()
    assert set(children) == {"Deployment", "Service", "Ingress"}
    dep = children["Deployment"]
    assert dep["metadata"]["name"] == "chat-general"
    assert dep["metadata"]["ownerReferences"][0] == {
        "apiVersion": "veza.io/v1alpha1", "kind": "ChatRoom", "name": "general", "uid": "uid-1",
        "controller": True, "blockOwnerDeletion": True}
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["chat"]
    env = {e["name"]: e for e in container["env"]}
    assert env["VEZA_RESOURCE_NAME"]["value"] == "general"
    assert env["VEZA_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "veza-connections",
                                                                     "key": "postgres-uri"}
    path = children["Ingress"]["spec"]["rules"][0]["http"]["paths"][0]
    assert path["path"] == "/chat/general" and path["backend"]["service"]["name"] == "chat-general"


def test_pods_meet_pod_security_restricted() -> None:
    pod = room_children()["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"]["type"] == "RuntimeDefault"


def test_pdb_only_with_several_replicas_and_hpa_only_with_autoscaling() -> None:
    assert "PodDisruptionBudget" in room_children(replicas=2)
    auto = room_children(replicas=2, autoscaling={"enabled": True, "minReplicas": 2, "maxReplicas": 6,
                                                  "targetConnectionsPerReplica": 1500})
    hpa = auto["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "veza.io/v1alpha1", "kind": "ChatRoom", "name": "general"}
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "veza_chat_connections"
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)


def test_channel_worker_runs_the_stream_command() -> None:
    raw = {"platformRef": {"name": "demo"}, "source": {"type": "live"}}
    from veza_operator.models import StreamChannelSpec

    children = by_kind(build_children(STREAM_CHANNEL, Owner("StreamChannel", "radio", "ns", "u"),
                                      StreamChannelSpec.model_validate(raw), raw, "demo", PLATFORM))
    assert children["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"] == ["stream"]
    assert children["Ingress"]["spec"]["rules"][0]["http"]["paths"][0]["path"] == "/stream/radio"


def test_platform_children_and_migration_job_per_version() -> None:
    owner = Owner("VezaPlatform", "demo", "ns", "u")
    kinds = [c["kind"] for c in platform_mod.build_children(owner, PLATFORM)]
    assert sorted(kinds) == sorted(["ConfigMap", "ServiceAccount", "ServiceAccount", "Job", "Deployment", "Service",
                                    "Ingress", "NetworkPolicy", "NetworkPolicy"])
    newer = PLATFORM.model_copy(update={"image": PLATFORM.image.model_copy(update={"tag": "9.9.9"})})
    assert platform_mod.migration_job_name("demo", PLATFORM) != platform_mod.migration_job_name("demo", newer)


def test_env_is_shared_with_local_runs() -> None:
    env = worker_env("demo", "ns", PLATFORM, "chat", "general", {"a": 1})
    assert env["VEZA_DATABASE_URL"] == SecretValue("veza-connections", "postgres-uri")
    local = resolve_env(env, {"veza-connections": {"postgres-uri": "postgresql://x", "AWS_ACCESS_KEY_ID": "k",
                                                   "AWS_SECRET_ACCESS_KEY": "s"}})
    assert local["VEZA_DATABASE_URL"] == "postgresql://x" and local["VEZA_RESOURCE_SPEC"] == '{"a":1}'


def test_subset_comparison_ignores_server_additions_and_normalises_quantities() -> None:
    desired = {"spec": {"replicas": 2, "template": {"resources": {"cpu": "0.5"}}, "ann": {}}, "x": ["a"]}
    observed = {"spec": {"replicas": 2, "template": {"resources": {"cpu": "500m"}, "extra": 1}}, "x": ["a"],
                "status": {}}
    assert is_subset(desired, observed)
    assert not is_subset({"spec": {"replicas": 3}}, observed)
    assert not is_subset({"x": ["a", "b"]}, observed)


def test_api_environment_uses_the_names_the_api_reads() -> None:
    from veza_api.settings import ApiSettings

    spec = PLATFORM.model_copy(update={"auth": PLATFORM.auth.model_copy(update={"accessTokenTTLSeconds": 600})})
    env = resolve_env(worker_env("demo", "ns", spec, "api"), {"veza-connections": {
        "postgres-uri": "postgresql://x", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}})
    settings = ApiSettings.from_env(env)
    assert settings.access_ttl_seconds == 600 and settings.refresh_ttl_seconds == spec.auth.refreshTokenTTLSeconds
    assert settings.database_url == "postgresql://x" and settings.jwt_issuer == "http://veza.test"


def test_live_source_password_comes_from_its_secret() -> None:
    raw = {"platformRef": {"name": "demo"},
           "source": {"type": "live", "passwordSecretRef": {"name": "radio-source", "key": "password"}}}
    env = worker_env("demo", "ns", PLATFORM, "stream", "radio", raw)
    assert env["VEZA_SOURCE_PASSWORD"] == SecretValue("radio-source", "password")


def test_scaling_does_not_change_the_pod_template() -> None:
    """kubectl scale and the HPA change spec.replicas: that must not restart every worker."""
    one = room_children(replicas=1)["Deployment"]
    three = room_children(replicas=3, autoscaling={"enabled": True, "minReplicas": 2, "maxReplicas": 6},
                          deletionPolicy="Delete")["Deployment"]
    assert one["spec"]["replicas"] == 1 and three["spec"]["replicas"] == 3
    assert one["spec"]["template"] == three["spec"]["template"]


def test_store_keeps_what_reconciles_read_and_shares_repeated_strings() -> None:
    store = Store()
    children = room_children()
    for kind in ("Deployment", "Service"):
        observed = json.loads(json.dumps(children[kind]))  # a parsed body, as from a watch
        observed["metadata"] |= {"resourceVersion": "7", "managedFields": [{"manager": "veza-operator"}]}
        observed["status"] = {"readyReplicas": 1} if kind == "Deployment" else {"loadBalancer": {}}
        store.put_child(observed)
    deployment = store.children[("Deployment", "ns", "chat-general")]
    service = store.children[("Service", "ns", "chat-general")]
    assert deployment["status"] == {"readyReplicas": 1} and "status" not in service
    assert "managedFields" not in deployment["metadata"]
    assert is_subset(children["Deployment"], deployment) and is_subset(children["Service"], service)
    # Equal keys and short values of separately parsed bodies are one object, not one copy per body.
    key = next(k for k in deployment["metadata"] if k == "labels")
    assert key is next(k for k in service["metadata"] if k == "labels")
    assert deployment["metadata"]["namespace"] is service["metadata"]["namespace"]
