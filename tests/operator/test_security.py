"""Security properties of what the operator builds and does, each shown against the real API server.

Where the attack is on a worker (its database role, its NATS user, the client address it trusts, where
it may connect), the test builds the children and has the API server accept them; where the attack is
on the operator (its RBAC, the specs it is handed), the test performs it and shows it refused.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.support.kube import KubeCluster
from tests.support.operator import platform
from veza_core.specs import ChatRoomSpec, StreamChannelSpec
from veza_operator import platform as platform_mod
from veza_operator.chatroom import CHAT_WORKERS, purge_job
from veza_operator.models import VezaPlatformSpec
from veza_operator.naming import Owner
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
    assert set(found) == {"demo-default-deny", "demo-allow-http", "demo-allow-egress", "demo-api-oidc",
                          "stream-radio-relay"}
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
