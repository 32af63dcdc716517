"""Security properties of what the operator builds and does, each shown against the real API server.

Where the attack is on a worker (its database role, its NATS user, the client address it trusts, where
it may connect), the test builds the children and has the API server accept them; where the attack is
on the operator (its RBAC, the specs it is handed), the test performs it and shows it refused.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.kube import KubeCluster
from tests.support.operator import (
    OPERATOR_NAMESPACE,
    REPO,
    OperatorProcess,
    channel,
    condition,
    connections_secret,
    platform,
    room,
    wait_condition,
)
from veza_core.specs import ChatRoomSpec, StreamChannelSpec
from veza_local.controlplane import tool, wait_for
from veza_operator import platform as platform_mod
from veza_operator.chatroom import CHAT_WORKERS, purge_job
from veza_operator.models import VezaPlatformSpec
from veza_operator.naming import Owner
from veza_operator.settings import Settings
from veza_operator.streamchannel import STREAM_WORKERS
from veza_operator.workers import build_children

# Where the workers read NATS files (the contract with veza_core.bus).
NATS_CREDS_FILE = "/var/run/veza/nats/user.creds"
NATS_CA_FILE = "/var/run/veza/nats/ca.crt"
PLATFORM_OWNER = Owner("VezaPlatform", "demo", "ns", "uid-p")
ROOM_OWNER = Owner("ChatRoom", "general", "ns", "uid-r")
CHANNEL_OWNER = Owner("StreamChannel", "radio", "ns", "uid-c")


def platform_spec(**changes: Any) -> VezaPlatformSpec:
    """The tests' platform with `changes` merged into its spec (one level deep per top-level key)."""
    spec = platform("ns")["spec"]
    for key, value in changes.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return VezaPlatformSpec.model_validate(spec)


def everything(spec: VezaPlatformSpec, channel: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every child of the platform, a room and a channel on it, and a room's history purge Job."""
    out = platform_mod.build_children(PLATFORM_OWNER, spec)
    room_raw = {"platformRef": {"name": "demo"}}
    out += build_children(CHAT_WORKERS, ROOM_OWNER, ChatRoomSpec.model_validate(room_raw), room_raw, "demo", spec)
    chan_raw = channel or {"platformRef": {"name": "demo"}, "source": {"type": "live"}}
    out += build_children(STREAM_WORKERS, CHANNEL_OWNER, StreamChannelSpec.model_validate(chan_raw), chan_raw,
                          "demo", spec)
    room_body = {"kind": "ChatRoom", "metadata": {"name": "general", "namespace": "ns", "uid": "uid-r"},
                 "spec": room_raw}
    platform_body = {"kind": "VezaPlatform", "metadata": {"name": "demo", "namespace": "ns", "uid": "uid-p"}}
    out.append(purge_job(room_body, platform_body, spec))
    return out


def workload(children: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(c for c in children if c["kind"] == kind and c["metadata"]["name"].startswith(name))


def pod(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def env_of(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in pod(obj)["containers"][0]["env"]}


def secret_ref(entry: dict[str, Any]) -> tuple[str, str]:
    ref = entry["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


@pytest.fixture(scope="module")
def scratch(kube: KubeCluster, operator_install: object) -> Iterator[str]:
    """A namespace to have manifests checked in (server-side dry runs: nothing is created)."""
    name = kube.create_namespace("sec")
    yield name
    kube.delete_namespace(name)


def assert_accepted(kube: KubeCluster, namespace: str, manifests: list[dict[str, Any]]) -> None:
    """The API server admits every manifest as it is (schema, defaults, validation; a server-side dry run)."""
    docs = copy.deepcopy(manifests)
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
        doc["metadata"].pop("ownerReferences", None)  # their owners exist only in the builders' world
    result = kube.run("kubectl", "apply", "--server-side", "--dry-run=server", "--field-manager=veza-operator",
                      "-f", "-", input=yaml.safe_dump_all(docs), check=False)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    assert result.stdout.count("serverside-applied") == len(docs), result.stdout


# -- 5: the client's address behind the front door ---------------------------------------------


def test_api_chat_and_stream_workers_trust_as_many_proxies_as_the_platform_declares() -> None:
    default = everything(platform_spec())
    for name in ("demo-api", "chat-general", "stream-radio"):
        assert env_of(workload(default, "Deployment", name))["VEZA_TRUSTED_PROXIES"] == {
            "name": "VEZA_TRUSTED_PROXIES", "value": "1"}, "one proxy: the Ingress controller or Gateway"
    two = everything(platform_spec(ingress={"trustedProxies": 2}))
    for name in ("demo-api", "chat-general", "stream-radio"):
        assert env_of(workload(two, "Deployment", name))["VEZA_TRUSTED_PROXIES"]["value"] == "2"


# -- 7: NATS credentials, a user per component, the servers' CA -----------------------------------

NATS = {"url": "tls://nats:4222", "credentialsSecretRef": {"name": "nats-creds", "key": "veza.creds"},
        "users": {"api": {"name": "nats-api"}, "chat": {"name": "nats-chat"}},
        "tls": {"caSecretRef": {"name": "nats-ca", "key": "ca.crt"}}}


def nats_platform() -> VezaPlatformSpec:
    spec = platform("ns")["spec"]
    spec["connections"]["nats"] = NATS
    return VezaPlatformSpec.model_validate(spec)


def test_nats_credentials_and_ca_are_read_only_files_and_each_component_its_own_user() -> None:
    children = everything(nats_platform())
    for name in ("demo-api", "chat-general", "stream-radio"):
        dep = workload(children, "Deployment", name)
        env = env_of(dep)
        assert env["VEZA_NATS_CREDS"] == {"name": "VEZA_NATS_CREDS", "value": NATS_CREDS_FILE}
        assert env["VEZA_NATS_TLS_CA"] == {"name": "VEZA_NATS_TLS_CA", "value": NATS_CA_FILE}
        mount = next(m for m in pod(dep)["containers"][0]["volumeMounts"] if m["mountPath"] == "/var/run/veza/nats")
        assert mount["readOnly"] is True
        volume = next(v for v in pod(dep)["volumes"] if v["name"] == mount["name"])
        assert volume["projected"]["defaultMode"] == 0o440
        assert [s["secret"] for s in volume["projected"]["sources"]] == [
            {"name": "nats-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]},
            {"name": "nats-creds", "items": [{"key": "veza.creds", "path": "user.creds"}]}]
    api, chat = env_of(workload(children, "Deployment", "demo-api")), env_of(workload(children, "Deployment",
                                                                                      "chat-general"))
    assert (secret_ref(api["VEZA_NATS_USER"]), secret_ref(api["VEZA_NATS_PASSWORD"])) == (
        ("nats-api", "user"), ("nats-api", "password"))
    assert (secret_ref(chat["VEZA_NATS_USER"]), secret_ref(chat["VEZA_NATS_PASSWORD"])) == (
        ("nats-chat", "user"), ("nats-chat", "password"))
    assert "VEZA_NATS_USER" not in env_of(workload(children, "Deployment", "stream-radio")), "no stream user named"
    assert secret_ref(env_of(workload(children, "Job", "purge-general"))["VEZA_NATS_USER"]) == ("nats-chat", "user")


# -- 11: a database role per component; the schema owner migrates ------------------------------


def components_platform(**components: dict[str, str]) -> VezaPlatformSpec:
    spec = platform("ns")["spec"]
    spec["connections"]["postgres"]["components"] = components
    return VezaPlatformSpec.model_validate(spec)


def test_each_component_connects_with_its_own_database_uri_and_only_the_migration_job_as_the_owner() -> None:
    spec = components_platform(api={"name": "db-api", "key": "uri"}, chat={"name": "db-chat", "key": "uri"},
                               stream={"name": "db-stream", "key": "uri"})
    children = everything(spec)
    urls = {name: secret_ref(env_of(workload(children, kind, name))["VEZA_DATABASE_URL"])
            for kind, name in [("Deployment", "demo-api"), ("Deployment", "chat-general"),
                               ("Deployment", "stream-radio"), ("Job", "demo-migrate"), ("Job", "purge-general")]}
    assert urls == {"demo-api": ("db-api", "uri"), "chat-general": ("db-chat", "uri"),
                    "stream-radio": ("db-stream", "uri"), "demo-migrate": ("veza-connections", "postgres-uri"),
                    "purge-general": ("db-chat", "uri")}
    # The migration Job grants each component's role what it needs: it learns the roles from their URIs.
    job = env_of(workload(children, "Job", "demo-migrate"))
    assert {c: secret_ref(job[f"VEZA_DATABASE_URL_{c.upper()}"]) for c in ("api", "chat", "stream")} == {
        "api": ("db-api", "uri"), "chat": ("db-chat", "uri"), "stream": ("db-stream", "uri")}
    assert not any(n.startswith("VEZA_DATABASE_URL_") for n in env_of(workload(children, "Deployment", "demo-api")))
    # Chat workers (and the purge Job) never change the schema on a cluster.
    for kind, name in [("Deployment", "chat-general"), ("Job", "purge-general")]:
        assert env_of(workload(children, kind, name))["VEZA_CHAT_MIGRATE"]["value"] == "0"
    # A component without its own URI falls back to the owner's.
    partial = everything(components_platform(chat={"name": "db-chat", "key": "uri"}))
    assert secret_ref(env_of(workload(partial, "Deployment", "stream-radio"))["VEZA_DATABASE_URL"]) == (
        "veza-connections", "postgres-uri")


@pytest.mark.kube
def test_the_api_server_accepts_the_workers_wired_with_every_connection_option(kube: KubeCluster,
                                                                               scratch: str) -> None:
    spec = platform("ns")["spec"]
    spec["connections"]["nats"] = NATS
    spec["connections"]["postgres"]["components"] = {"api": {"name": "db-api", "key": "uri"},
                                                     "stream": {"name": "db-stream", "key": "uri"}}
    spec["ingress"]["trustedProxies"] = 2
    full = VezaPlatformSpec.model_validate(spec)
    assert_accepted(kube, scratch, everything(full))
    # The CRD admits the fields (and keeps them: nothing pruned as unknown).
    body = platform(scratch, **spec)
    out = yaml.safe_load(kube.kubectl("apply", "--dry-run=server", "-o", "json", "-f", "-",
                                      input=yaml.safe_dump(body)))
    assert out["spec"]["connections"]["nats"] == NATS
    assert out["spec"]["connections"]["postgres"]["components"] == spec["connections"]["postgres"]["components"]
    assert out["spec"]["ingress"]["trustedProxies"] == 2


# -- 12: egress NetworkPolicies -------------------------------------------------------------------

METADATA = {"169.254.169.254/32", "fd00:ec2::254/128"}
RELAY = {"platformRef": {"name": "demo"},
         "source": {"type": "relay", "relay": {"url": "https://radio.example.org:8443/live",
                                               "allowedHosts": ["radio.example.org"]}}}


def policies(children: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["metadata"]["name"]: c for c in children if c["kind"] == "NetworkPolicy"}


def reaches_metadata(rule: dict[str, Any]) -> bool:
    """Whether an egress rule admits a cloud metadata address (a rule without `to` admits everything)."""
    if not rule.get("to"):
        return True
    for peer in rule["to"]:
        block = peer.get("ipBlock")
        if block is None:
            continue  # pods of selected namespaces: never the link-local metadata addresses
        network = ipaddress.ip_network(block["cidr"])
        for meta in METADATA:
            m = ipaddress.ip_network(meta)
            inside = m.version == network.version and m.subnet_of(network)  # type: ignore[arg-type]
            if inside and meta not in block.get("except", []):
                return True
    return False


def test_every_pod_of_the_platform_is_denied_egress_but_what_it_needs_and_never_a_metadata_address() -> None:
    spec = platform_spec(auth={"oidc": {"issuerURL": "https://login.example.com", "clientID": "veza",
                                        "clientSecretRef": {"name": "oidc", "key": "secret"}}},
                         observability={"otlpEndpoint": "http://otel.monitoring:4318"})
    found = policies(everything(spec, RELAY))
    assert set(found) == {"demo-default-deny", "demo-allow-http", "demo-allow-metrics", "demo-allow-egress",
                          "demo-api-oidc", "stream-radio-relay"}
    deny = found["demo-default-deny"]["spec"]
    assert deny == {"podSelector": {"matchLabels": {"veza.io/platform": "demo"}},
                    "policyTypes": ["Ingress", "Egress"]}, "deny both ways, allow rules add up"
    for name, policy in found.items():
        for rule in policy["spec"].get("egress", []):
            assert not reaches_metadata(rule), (name, rule)
    egress = found["demo-allow-egress"]["spec"]["egress"]
    dns, backends, platform_pods, otlp = egress
    assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}
    assert "ports" not in backends, "by default the backing services may be anywhere, on any port"
    assert platform_pods == {"to": [{"podSelector": {"matchLabels": {"veza.io/platform": "demo"}}}],
                             "ports": [{"protocol": "TCP", "port": 8080}]}
    assert otlp["ports"] == [{"protocol": "TCP", "port": 4318}]
    oidc = found["demo-api-oidc"]["spec"]
    assert oidc["podSelector"]["matchLabels"] == {"veza.io/platform": "demo", "app.kubernetes.io/component": "api"}
    assert oidc["egress"][0]["ports"] == [{"protocol": "TCP", "port": 443}]
    relay = found["stream-radio-relay"]["spec"]
    assert relay["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "stream-radio"
    assert {p["port"] for p in relay["egress"][0]["ports"]} == {8443, 80, 443}
    assert "stream-radio-relay" not in policies(everything(spec)), "a live channel reaches no internet"


DECLARED = {"dns": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}},
            "backends": [{"cidrs": ["10.20.0.0/16", "fd00::/8"], "ports": [5432, 6379]},
                         {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "nats"}},
                          "ports": [4222]},
                         {"cidrs": ["169.254.0.0/16"], "ports": [443]}]}


def test_the_platform_engineer_declares_where_the_backing_services_are() -> None:
    spec = platform_spec(networkPolicies={"egress": DECLARED})
    egress = policies(everything(spec))["demo-allow-egress"]["spec"]["egress"]
    dns, databases, nats, link_local, _ = egress
    assert dns["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert databases == {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}},
                                {"ipBlock": {"cidr": "fd00::/8", "except": ["fd00:ec2::254/128"]}}],
                         "ports": [{"protocol": "TCP", "port": 5432}, {"protocol": "TCP", "port": 6379}]}
    assert nats["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "nats"}}}]
    assert link_local["to"] == [{"ipBlock": {"cidr": "169.254.0.0/16", "except": ["169.254.169.254/32"]}}]
    for cidr in ("169.254.169.254/32", "fd00:ec2::254/128"):
        with pytest.raises(ValueError, match="metadata"):
            platform_spec(networkPolicies={"egress": {"backends": [{"cidrs": [cidr]}]}})


@pytest.mark.kube
def test_the_api_server_accepts_the_egress_policies(kube: KubeCluster, scratch: str) -> None:
    oidc = {"oidc": {"issuerURL": "https://login.example.com", "clientID": "veza",
                     "clientSecretRef": {"name": "oidc", "key": "secret"}}}
    for spec in (platform_spec(auth=oidc, observability={"otlpEndpoint": "https://otel.example.com"}),
                 platform_spec(networkPolicies={"egress": DECLARED})):
        found = [c for c in everything(spec, RELAY) if c["kind"] == "NetworkPolicy"]
        assert_accepted(kube, scratch, found)
    # The CRD takes the declarations (and refuses what is no CIDR).
    body = platform(scratch, networkPolicies={"egress": DECLARED})
    out = yaml.safe_load(kube.kubectl("apply", "--dry-run=server", "-o", "json", "-f", "-",
                                      input=yaml.safe_dump(body)))
    assert out["spec"]["networkPolicies"]["egress"]["backends"][0]["cidrs"] == ["10.20.0.0/16", "fd00::/8"]
    bad = platform(scratch, networkPolicies={"egress": {"backends": [{"cidrs": ["postgres.example.com"]}]}})
    refused = kube.run("kubectl", "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(bad), check=False)
    assert refused.returncode != 0 and "cidrs" in refused.stderr


# -- 10: the operator is no confused deputy --------------------------------------------------------


def deployment_images(kube: KubeCluster, ns: str, *names: str) -> dict[str, str]:
    out = {}
    for name in names:
        dep = kube.get("deployment", name, ns)
        assert dep is not None, name
        out[name] = dep["spec"]["template"]["spec"]["containers"][0]["image"]
    return out


@pytest.mark.kube
def test_an_image_from_a_repository_the_operator_does_not_allow_is_refused_and_nothing_rolls(
        kube: KubeCluster, ns: str) -> None:
    kube.apply(connections_secret(ns), platform(ns), room(ns, "lobby", placement="Dedicated"))
    wait_condition(kube, "vezaplatform", "demo", ns)
    wait_condition(kube, "chatroom", "lobby", ns)
    before = deployment_images(kube, ns, "demo-api", "chat-lobby")
    jobs = {j["metadata"]["name"] for j in json.loads(kube.kubectl("get", "jobs", "-n", ns, "-o", "json"))["items"]}

    kube.apply(platform(ns, image={"repository": "registry.evil.example/miner", "tag": "1"}))
    p = wait_condition(kube, "vezaplatform", "demo", ns, status="False", reason="ImageNotAllowed")
    assert "registry.evil.example/miner" in condition(p)["message"]
    r = wait_condition(kube, "chatroom", "lobby", ns, status="False", reason="ImageNotAllowed")
    assert "VezaPlatform 'demo'" in condition(r)["message"]
    assert deployment_images(kube, ns, "demo-api", "chat-lobby") == before
    after = {j["metadata"]["name"] for j in json.loads(kube.kubectl("get", "jobs", "-n", ns, "-o", "json"))["items"]}
    assert after == jobs, "no migration Job of the refused image"

    kube.apply(platform(ns))  # back to an allowed image: heals
    wait_condition(kube, "vezaplatform", "demo", ns)
    wait_condition(kube, "chatroom", "lobby", ns)


def secret(ns: str, name: str, labels: dict[str, str] | None = None, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
            "stringData": data or {"password": "another-application's-secret"}}


@pytest.mark.kube
def test_a_secret_not_labelled_for_the_platform_is_never_mounted(kube: KubeCluster, ns: str) -> None:
    # Another application's Secrets in the same namespace.
    kube.apply(secret(ns, "billing-db", uri="postgresql://billing:secret@billing/billing"), secret(ns, "billing-admin"))
    unlabelled = platform(ns)
    unlabelled["spec"]["connections"]["postgres"]["uriSecretRef"] = {"name": "billing-db", "key": "uri"}
    kube.apply(connections_secret(ns), unlabelled)
    p = wait_condition(kube, "vezaplatform", "demo", ns, status="False", reason="SecretNotUsable")
    assert "billing-db" in condition(p)["message"] and "veza.io/usable-by=demo" in condition(p)["message"]
    assert kube.get("deployment", "demo-api", ns) is None and kube.get("job", "demo-migrate", ns) is None
    assert not json.loads(kube.kubectl("get", "deployments,jobs", "-n", ns, "-o", "json"))["items"]

    kube.apply(platform(ns), channel(ns, "radio", source={
        "type": "live", "passwordSecretRef": {"name": "billing-admin", "key": "password"}}))
    wait_condition(kube, "vezaplatform", "demo", ns)
    c = wait_condition(kube, "streamchannel", "radio", ns, status="False", reason="SecretNotUsable")
    assert "billing-admin" in condition(c)["message"]
    assert kube.get("deployment", "stream-radio", ns) is None

    # Labelled by whoever owns it (the platform engineer), it is the platform's to use.
    kube.kubectl("label", "secret", "billing-admin", "-n", ns, "veza.io/usable-by=demo")
    wait_condition(kube, "streamchannel", "radio", ns, timeout=90)


@pytest.mark.kube
def test_ingress_annotations_that_configure_the_controller_are_refused(kube: KubeCluster, ns: str) -> None:
    snippet = {"nginx.ingress.kubernetes.io/configuration-snippet": "location / { proxy_pass http://evil; }"}
    kube.apply(connections_secret(ns), platform(ns, ingress={"host": "veza.test", "annotations": snippet}),
               room(ns, "lobby", placement="Dedicated"))
    p = wait_condition(kube, "vezaplatform", "demo", ns, status="False", reason="AnnotationNotAllowed")
    assert "nginx.ingress.kubernetes.io/configuration-snippet" in condition(p)["message"]
    wait_condition(kube, "chatroom", "lobby", ns, status="False", reason="AnnotationNotAllowed")
    assert not json.loads(kube.kubectl("get", "ingresses", "-n", ns, "-o", "json"))["items"]

    fine = {"cert-manager.io/cluster-issuer": "letsencrypt"}
    kube.apply(platform(ns, ingress={"host": "veza.test", "annotations": fine}))
    wait_condition(kube, "chatroom", "lobby", ns)
    ingress = kube.get("ingress", "chat-lobby", ns)
    assert ingress is not None and ingress["metadata"]["annotations"] == fine


@pytest.mark.kube
def test_an_existing_object_of_the_same_name_is_never_taken_over(kube: KubeCluster, ns: str) -> None:
    """Someone else's Service is named like a room's: a room named so must not take it over (and have the
    garbage collector delete it with the room)."""
    theirs = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "chat-payments", "namespace": ns},
              "spec": {"selector": {"app": "payments"}, "ports": [{"port": 80, "targetPort": 8443}]}}
    kube.apply(theirs)
    kube.apply(connections_secret(ns), platform(ns), room(ns, "payments", placement="Dedicated"))
    r = wait_condition(kube, "chatroom", "payments", ns, status="False", reason="NameConflict")
    assert "Service/chat-payments" in condition(r)["message"]
    service = kube.get("service", "chat-payments", ns)
    assert service is not None
    assert not service["metadata"].get("ownerReferences") and "app.kubernetes.io/managed-by" not in (
        service["metadata"].get("labels") or {})
    assert service["spec"]["selector"] == {"app": "payments"}
    kube.kubectl("delete", "chatroom", "payments", "-n", ns)
    wait_for(lambda: kube.get("deployment", "chat-payments", ns) is None, timeout=60, interval=1,
             message="the room's own children collected")
    assert kube.get("service", "chat-payments", ns) is not None, "theirs survives the room"


def test_the_allow_lists_come_from_the_operators_settings() -> None:
    from veza_operator.admission import platform_refusal, repository_allowed, secrets_in

    settings = Settings.from_env({
        "VEZA_ALLOWED_IMAGE_REPOSITORIES": "ghcr.io/veza-platform/veza, registry.example/veza/",
        "VEZA_INGRESS_ANNOTATIONS_ALLOWED": "cert-manager.io/*"})
    assert repository_allowed("registry.example/veza/worker", settings.allowed_image_repositories)
    assert not repository_allowed("registry.example/vezaxyz", settings.allowed_image_repositories)
    assert not repository_allowed("ghcr.io/veza-platform/veza-evil", settings.allowed_image_repositories)
    spec = platform_spec(ingress={"annotations": {"traefik.ingress.kubernetes.io/router.tls": "true"}})
    refusal = platform_refusal(spec, spec.image, settings)
    assert refusal is not None and refusal.reason == "AnnotationNotAllowed"
    for key in ("nginx.ingress.kubernetes.io/server-snippet", "nginx.ingress.kubernetes.io/auth-url",
                "nginx.ingress.kubernetes.io/configuration-snippet", "nginx.ingress.kubernetes.io/server-alias"):
        default = platform_refusal(platform_spec(ingress={"annotations": {key: "x"}}), spec.image, Settings())
        assert default is not None and key in default.message, "refused by default"
    # Every Secret the children read is checked, wherever the builders put it.
    tls = platform_spec(ingress={"tls": {"secretName": "veza-tls"}})
    assert secrets_in(everything(tls, RELAY)) == {"veza-connections", "demo-jwt-keys", "demo-directory", "veza-tls"}
    assert secrets_in(everything(nats_platform())) >= {"nats-creds", "nats-ca", "nats-api", "nats-chat"}


def test_the_platforms_relay_deny_list_reaches_stream_workers_only() -> None:
    """A relay channel's allowedHosts is the resource author's word; the networks the platform engineer denies
    (the cluster's own ranges) come from the operator's settings, and no resource changes them."""
    settings = Settings.from_env({"VEZA_RELAY_DENIED_NETWORKS": "10.96.0.0/12, fd00:10::/64"})
    assert settings.relay_denied_networks == ("10.96.0.0/12", "fd00:10::/64")
    with pytest.raises(ValueError, match="not-a-network"):
        Settings.from_env({"VEZA_RELAY_DENIED_NETWORKS": "not-a-network"})
    spec = platform_spec()
    stream = build_children(STREAM_WORKERS, CHANNEL_OWNER, StreamChannelSpec.model_validate(RELAY), RELAY, "demo",
                            spec, relay_denied=settings.relay_denied_networks)
    env = env_of(workload(stream, "Deployment", "stream-"))
    assert env["VEZA_STREAM_RELAY_DENIED_NETWORKS"]["value"] == "10.96.0.0/12,fd00:10::/64"
    room_raw = {"platformRef": {"name": "demo"}}
    chat = build_children(CHAT_WORKERS, ROOM_OWNER, ChatRoomSpec.model_validate(room_raw), room_raw, "demo", spec,
                          relay_denied=settings.relay_denied_networks)
    assert "VEZA_STREAM_RELAY_DENIED_NETWORKS" not in env_of(workload(chat, "Deployment", "chat-"))


# -- 9: an operator watching namespaces holds no rights elsewhere -------------------------------------


@pytest.mark.kube
def test_an_operator_watching_namespaces_cannot_read_secrets_or_create_workloads_elsewhere(
        kube: KubeCluster, operator_install: object, operator_stepped_aside: None, tmp_path: Path) -> None:
    watched, other = kube.create_namespace("watched"), kube.create_namespace("other")
    release = sa = "veza-scoped"  # the chart's RBAC under a release of its own
    rendered = kube.helm("template", release, str(REPO / "charts" / "veza"), "--namespace", OPERATOR_NAMESPACE,
                         "--set", f"serviceAccount.name={sa}", "--set", f"operator.peering={release}",
                         "--set", f"operator.watchNamespaces={{{watched}}}",
                         "--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml",
                         "--show-only", "templates/peering.yaml").stdout
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=rendered)
    user = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{sa}"

    def can(verb: str, resource: str, namespace: str | None) -> bool:
        where = ["-n", namespace] if namespace else ["--all-namespaces"]
        answer = kube.run("kubectl", "auth", "can-i", verb, resource, f"--as={user}", *where, check=False)
        return answer.stdout.strip() == "yes"

    proc: OperatorProcess | None = None
    try:
        # SubjectAccessReviews: what it needs where it watches, nothing anywhere else.
        for verb, resource in [("get", "secrets"), ("create", "secrets"), ("create", "deployments"),
                               ("create", "jobs"), ("patch", "chatrooms.veza.io")]:
            assert can(verb, resource, watched), (verb, resource)
        for namespace in (other, OPERATOR_NAMESPACE, None):
            for verb, resource in [("get", "secrets"), ("create", "secrets"), ("create", "deployments"),
                                   ("create", "jobs"), ("get", "configmaps"), ("list", "vezaplatforms.veza.io")]:
                assert not can(verb, resource, namespace), (verb, resource, namespace or "cluster-wide")
        assert not can("list", "secrets", watched) and not can("watch", "secrets", watched)
        assert not can("create", "clusterrolebindings", None)

        # The attack itself, with a token of that ServiceAccount: refused by the API server.
        kubeconfig = kube.service_account_kubeconfig(OPERATOR_NAMESPACE, sa, tmp_path / "kubeconfig")
        kube.apply(secret(other, "billing-db", uri="postgresql://billing:secret@billing/billing"))
        stolen = subprocess.run([tool("kubectl"), f"--kubeconfig={kubeconfig}", "get", "secret", "billing-db",
                                 "-n", other, "-o", "json"], capture_output=True, text=True, timeout=60)
        assert stolen.returncode != 0 and "forbidden" in stolen.stderr.lower(), stolen.stderr
        miner = subprocess.run([tool("kubectl"), f"--kubeconfig={kubeconfig}", "create", "deployment", "miner",
                                "--image=registry.evil.example/miner", "-n", other],
                               capture_output=True, text=True, timeout=60)
        assert miner.returncode != 0 and "forbidden" in miner.stderr.lower(), miner.stderr
        assert kube.get("deployment", "miner", other) is None

        # And the operator does its work with exactly these rights.
        proc = OperatorProcess(kubeconfig, tmp_path / "operator.log", peering=release, namespaces=[watched]).start()
        kube.apply(connections_secret(watched), platform(watched), room(watched, "lobby"))
        wait_condition(kube, "vezaplatform", "demo", watched, timeout=90)
        wait_condition(kube, "chatroom", "lobby", watched, timeout=90)
    finally:
        if proc is not None:
            proc.stop()
        kube.kubectl("delete", "clusterrole,clusterrolebinding", f"{release}-operator", "--ignore-not-found")
        kube.kubectl("delete", "serviceaccount", sa, "-n", OPERATOR_NAMESPACE, "--ignore-not-found")
        for namespace in (watched, other):
            kube.delete_namespace(namespace)
