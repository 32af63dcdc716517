"""A VezaPlatform whose PostgreSQL is a CloudNativePG Cluster: wiring, health, the example.

Against a real API server serving CloudNativePG's own CRDs (from its Go module, hack/build-tools.sh). No
CloudNativePG operator runs here: a test writes the Cluster's status and creates its `<cluster>-app` Secret
itself, as CloudNativePG would (kwok plays the kubelet in the same way).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from tests.support.kube import KubeCluster
from tests.support.operator import (
    REPO,
    OperatorProcess,
    condition,
    connections_secret,
    platform,
    wait_condition,
)
from veza_local import crfiles
from veza_local.controlplane import tool, wait_for
from veza_operator import cnpg, wiring
from veza_operator import platform as platform_mod
from veza_operator.conditions import Health
from veza_operator.controller import Store
from veza_operator.models import VezaPlatformSpec
from veza_operator.naming import Owner

CLUSTERS = "clusters.postgresql.cnpg.io"
CRDS_FILE = "cloudnative-pg-crds.yaml"  # next to the control-plane binaries
EXAMPLE = REPO / "examples" / "cloudnative-pg"
OWNER = Owner("VezaPlatform", "demo", "ns", "uid-p")
HEALTHY = "Cluster in healthy state"


def cluster_connections(**postgres: Any) -> dict[str, Any]:
    """The tests' connections with PostgreSQL replaced by `postgres`."""
    connections: dict[str, Any] = platform("ns")["spec"]["connections"]
    return {**connections, "postgres": postgres}


def spec_with(**postgres: Any) -> VezaPlatformSpec:
    return VezaPlatformSpec.model_validate({**platform("ns")["spec"], "connections": cluster_connections(**postgres)})


def env_of(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in workload["spec"]["template"]["spec"]["containers"][0]["env"]}


def secret_ref(entry: dict[str, Any]) -> tuple[str, str]:
    ref = entry["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def children_env(spec: VezaPlatformSpec) -> dict[str, dict[str, dict[str, Any]]]:
    """The environment of the API Deployment and of the migration Job, by kind."""
    children = platform_mod.build_children(OWNER, spec)
    return {c["kind"]: env_of(c) for c in children if c["kind"] in ("Deployment", "Job")
            and c["metadata"]["labels"]["app.kubernetes.io/component"] != "chat"}  # not the chat pool


# -- pure parts ---------------------------------------------------------------------------------


def test_a_cluster_wires_its_app_secret_for_everyone_and_its_ro_service_for_reads() -> None:
    spec = spec_with(cluster={"name": "veza-db"}, read={})
    env = children_env(spec)
    api, job = env["Deployment"], env["Job"]
    assert secret_ref(api["VEZA_DATABASE_URL"]) == secret_ref(job["VEZA_DATABASE_URL"]) == ("veza-db-app", "uri")
    assert api["VEZA_DATABASE_READ_HOST"]["value"] == "veza-db-ro"
    assert api["VEZA_DATABASE_READ_MAX_LAG_SECONDS"]["value"] == "5"
    assert "VEZA_DATABASE_READ_URL" not in api
    # Migrations read what they just wrote: the migration Job never reads from a replica.
    assert not any(name.startswith("VEZA_DATABASE_READ_") for name in job)
    for component in ("chat", "stream"):
        worker = wiring.worker_env("demo", "ns", spec, component)
        assert worker["VEZA_DATABASE_URL"] == wiring.SecretValue("veza-db-app", "uri")
        assert worker["VEZA_DATABASE_READ_HOST"] == "veza-db-ro"
    # The operator checks the Secret exists and is labelled for the platform, like any other it mounts.
    assert "veza-db-app" in wiring.secrets_referenced(spec)
    # A component's own role still gets its own URI; the owner's is the cluster's.
    own = spec_with(cluster={"name": "veza-db"}, components={"chat": {"name": "db-chat", "key": "uri"}})
    assert wiring.worker_env("demo", "ns", own, "chat")["VEZA_DATABASE_URL"] == wiring.SecretValue("db-chat", "uri")
    assert wiring.worker_env("demo", "ns", own, "api", schema_owner=True)["VEZA_DATABASE_URL_CHAT"] == \
        wiring.SecretValue("db-chat", "uri")


def test_a_read_secret_gives_the_full_read_uri_and_no_read_section_reads_the_primary() -> None:
    ref = {"name": "replica", "key": "uri"}
    for postgres in ({"uriSecretRef": {"name": "db", "key": "uri"}, "read": {"uriSecretRef": ref, "maxLagSeconds": 2}},
                     {"cluster": {"name": "veza-db"}, "read": {"uriSecretRef": ref, "maxLagSeconds": 2}}):
        api = children_env(spec_with(**postgres))["Deployment"]
        assert secret_ref(api["VEZA_DATABASE_READ_URL"]) == ("replica", "uri")
        assert api["VEZA_DATABASE_READ_MAX_LAG_SECONDS"]["value"] == "2"
        assert "VEZA_DATABASE_READ_HOST" not in api
    for postgres in ({"uriSecretRef": {"name": "db", "key": "uri"}}, {"cluster": {"name": "veza-db"}}):
        api = children_env(spec_with(**postgres))["Deployment"]
        assert not any(name.startswith("VEZA_DATABASE_READ_") for name in api)


def test_a_separate_analytics_database_reaches_the_api_and_the_migration_job_only() -> None:
    spec = spec_with(uriSecretRef={"name": "db", "key": "uri"}, analytics={"uriSecretRef": {"name": "stats",
                                                                                            "key": "uri"}})
    env = children_env(spec)
    for kind in ("Deployment", "Job"):
        assert secret_ref(env[kind]["VEZA_ANALYTICS_DATABASE_URL"]) == ("stats", "uri")
    for component in ("chat", "stream"):
        assert "VEZA_ANALYTICS_DATABASE_URL" not in wiring.worker_env("demo", "ns", spec, component)
    assert "stats" in wiring.secrets_referenced(spec)
    # None named: the store is the schema `analytics` of the platform's database (the API's default).
    assert "VEZA_ANALYTICS_DATABASE_URL" not in children_env(spec_with(uriSecretRef={"name": "db", "key": "uri"}))[
        "Deployment"]


@pytest.mark.parametrize(("postgres", "message"), [
    ({"uriSecretRef": {"name": "db", "key": "uri"}, "cluster": {"name": "veza-db"}},
     "set exactly one of uriSecretRef and cluster"),
    ({}, "set exactly one of uriSecretRef and cluster"),
    ({"uriSecretRef": {"name": "db", "key": "uri"}, "read": {}}, "read needs a uriSecretRef unless a cluster is named"),
])
def test_the_spec_names_exactly_one_database_and_a_read_source(postgres: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec_with(**postgres)


def cluster_body(phase: str | None = None, ready: str | None = None, reason: str = "") -> dict[str, Any]:
    status: dict[str, Any] = {}
    if phase is not None:
        status["phase"] = phase
    if reason:
        status["phaseReason"] = reason
    if ready is not None:
        status["conditions"] = [{"type": "Ready", "status": ready, "reason": "r", "message": "m"}]
    return {"kind": "Cluster", "metadata": {"name": "veza-db", "namespace": "ns"}, "status": status}


def test_the_clusters_ready_condition_or_else_its_phase_says_whether_it_is_healthy() -> None:
    assert cnpg.cluster_health(cluster_body(HEALTHY, "True"), "veza-db") is None
    assert cnpg.cluster_health(cluster_body(HEALTHY), "veza-db") is None  # no conditions yet: the phase
    missing = cnpg.cluster_health(None, "veza-db")
    assert missing is not None and missing.reason == "PostgresNotReady" and "not found" in missing.message
    # The condition wins over the phase (CloudNativePG derives it from the phase at each of its loops).
    starting = cnpg.cluster_health(cluster_body("Setting up primary", "False"), "veza-db")
    assert starting is not None and starting.progressing and not starting.degraded and not starting.ready
    assert "Setting up primary" in starting.message
    fresh = cnpg.cluster_health(cluster_body(), "veza-db")
    assert fresh is not None and "no phase reported yet" in fresh.message
    # A phase CloudNativePG leaves only after someone acts is Degraded (kstatus: Stalled), not a wait.
    stuck = cnpg.cluster_health(cluster_body("Cluster is unrecoverable and needs manual intervention", "False",
                                             "two primaries"), "veza-db")
    assert stuck is not None and stuck.degraded and "two primaries" in stuck.message


def test_a_refusal_over_the_clusters_secret_is_said_in_terms_of_the_cluster() -> None:
    spec = spec_with(cluster={"name": "veza-db"})
    starting = cnpg.cluster_health(cluster_body("Setting up primary", "False"), "veza-db")
    missing = Health(False, "SecretNotFound", "Secret(s) not found: veza-db-app.", degraded=True)
    said = cnpg.explain_refusal(spec, missing, starting)
    assert said.reason == "PostgresNotReady" and said.progressing and not said.degraded
    assert said.message.endswith("Setting up primary. Secret(s) not found: veza-db-app.")
    unlabelled = Health(False, "SecretNotUsable", "Secret(s) not labelled veza.io/usable-by=demo: veza-db-app.",
                        degraded=True)
    assert "spec.inheritedMetadata.labels" in cnpg.explain_refusal(spec, unlabelled, None).message
    # Another Secret's refusal, or a platform without a cluster, is reported as it is.
    other = Health(False, "SecretNotFound", "Secret(s) not found: veza-connections.", degraded=True)
    assert cnpg.explain_refusal(spec, other, starting) == other
    assert cnpg.explain_refusal(spec_with(uriSecretRef={"name": "db", "key": "uri"}), missing, None) == missing


def test_a_cluster_event_concerns_the_platforms_of_its_namespace_naming_it() -> None:
    store = Store()
    for ns, name, named in (("a", "one", "veza-db"), ("a", "two", "other"), ("b", "three", "veza-db")):
        store.put_owner(platform(ns, name, connections=cluster_connections(cluster={"name": named})))
    store.put_owner(platform("a", "four"))
    assert cnpg.platforms_naming(store.owners, "a", "veza-db") == [("VezaPlatform", "a", "one")]


def test_the_workers_reach_the_clusters_pods_however_narrow_the_backends() -> None:
    spec = spec_with(cluster={"name": "veza-db"})
    spec.networkPolicies.egress.backends = []
    (egress,) = [p for p in platform_mod.network_policies(OWNER, spec) if p["metadata"]["name"] == "demo-allow-egress"]
    rules = egress["spec"]["egress"]
    assert {"to": [{"podSelector": {"matchLabels": {"cnpg.io/cluster": "veza-db"}}}],
            "ports": [{"protocol": "TCP", "port": 5432}]} in rules
    plain = spec_with(uriSecretRef={"name": "db", "key": "uri"})
    assert "cnpg.io/cluster" not in json.dumps(platform_mod.network_policies(OWNER, plain))


def test_the_example_platform_names_its_cluster_and_reads_from_the_replicas() -> None:
    (found,) = crfiles.load([EXAMPLE]).platforms
    spec = VezaPlatformSpec.model_validate(found.spec)
    assert spec.connections.postgres.cluster is not None and spec.connections.postgres.cluster.name == "veza-db"
    docs = {d["kind"]: d for d in yaml.safe_load_all((EXAMPLE / "platform.yaml").read_text()) if d}
    # The label that makes CloudNativePG's app Secret usable by the platform.
    assert docs["Cluster"]["spec"]["inheritedMetadata"]["labels"] == {"veza.io/usable-by": found.name}
    assert docs["Cluster"]["metadata"]["name"] == "veza-db" and docs["Cluster"]["spec"]["instances"] == 2


# -- against the API server ---------------------------------------------------------------------


def served(kube: KubeCluster) -> bool:
    return kube.get("customresourcedefinition", CLUSTERS) is not None


def crd_names() -> list[str]:
    return [doc["metadata"]["name"] for doc in yaml.safe_load_all(Path(tool(CRDS_FILE)).read_text()) if doc]


def install_cloudnative_pg(kube: KubeCluster) -> None:
    kube.kubectl("apply", "--server-side", "--field-manager=veza-tests", "-f", tool(CRDS_FILE))
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in crd_names()])


@pytest.fixture(scope="module")
def cnpg_cleanup(kube: KubeCluster, operator: OperatorProcess) -> Iterator[None]:
    """Removes CloudNativePG's CRDs after this module when it installed them."""
    preinstalled = served(kube)
    yield
    if not preinstalled and served(kube):
        # An API vanishing under a running watch is fatal to kopf (docs/operator.md): the shared operator is
        # restarted around the removal, as Kubernetes would restart its pod.
        operator.stop()
        kube.kubectl("delete", "--ignore-not-found", *[f"crd/{n}" for n in crd_names()])
        operator.start()


@pytest.fixture(scope="module")
def cloudnative_pg(kube: KubeCluster, operator: OperatorProcess, cnpg_cleanup: None) -> None:
    """CloudNativePG's CRDs served, and the shared operator watching Clusters (restarted once they are)."""
    if not served(kube):
        install_cloudnative_pg(kube)
    operator.stop()
    operator.start()


def cluster(ns: str, name: str = "veza-db", platform_name: str = "demo") -> dict[str, Any]:
    return {"apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster", "metadata": {"name": name, "namespace": ns},
            "spec": {"instances": 2, "storage": {"size": "1Gi"},
                     "inheritedMetadata": {"labels": {"veza.io/usable-by": platform_name}}}}


def app_secret(kube: KubeCluster, ns: str, name: str = "veza-db") -> None:
    """The `<cluster>-app` Secret as CloudNativePG makes it: its labels plus the Cluster's inherited ones, owned
    by the Cluster, `uri` on `<cluster>-rw`."""
    body = kube.get(CLUSTERS, name, ns)
    assert body is not None, f"Cluster {name} missing"
    labels = {"cnpg.io/userType": "app", "cnpg.io/reload": "true", "app.kubernetes.io/managed-by": "cloudnative-pg",
              **((body["spec"].get("inheritedMetadata") or {}).get("labels") or {})}
    kube.apply({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/basic-auth", "metadata": {
        "name": f"{name}-app", "namespace": ns, "labels": labels,
        "ownerReferences": [{"apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster", "name": name,
                             "uid": body["metadata"]["uid"], "controller": True}]},
        "stringData": {"username": "app", "user": "app", "password": "pw", "dbname": "app", "host": f"{name}-rw",
                       "port": "5432", "uri": f"postgresql://app:pw@{name}-rw.{ns}:5432/app"}})


def set_cluster_status(kube: KubeCluster, ns: str, phase: str, name: str = "veza-db") -> None:
    """Write the Cluster's status as CloudNativePG does: the phase, and Ready derived from it."""
    healthy = phase == HEALTHY
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status = {"phase": phase, "instances": 2, "readyInstances": 2 if healthy else 1,
              "writeService": f"{name}-rw", "readService": f"{name}-r", "conditions": [{
                  "type": "Ready", "status": "True" if healthy else "False",
                  "reason": "ClusterIsReady" if healthy else "ClusterIsNotReady",
                  "message": "Cluster is Ready" if healthy else "Cluster Is Not Ready", "lastTransitionTime": stamp}]}
    kube.kubectl("patch", CLUSTERS, name, "-n", ns, "--subresource=status", "--type=merge",
                 "-p", json.dumps({"status": status}))


def cluster_platform(ns: str, **postgres: Any) -> dict[str, Any]:
    postgres = postgres or {"cluster": {"name": "veza-db"}, "read": {}}
    return platform(ns, connections=cluster_connections(**postgres))


def api_env(kube: KubeCluster, ns: str) -> dict[str, dict[str, Any]]:
    deployment = wait_for(lambda: kube.get("deployment", "demo-api", ns), timeout=30, message="demo-api")
    return env_of(deployment)


# Runs first: it needs the cluster without CloudNativePG's CRDs, and installs them halfway.
@pytest.mark.kube
@pytest.mark.usefixtures("cnpg_cleanup")
def test_a_cluster_named_without_cloudnative_pg_is_reported_and_heals_once_installed(kube: KubeCluster,
                                                                                      ns: str) -> None:
    if served(kube):
        pytest.skip("the cluster already serves CloudNativePG's API")
    kube.apply(connections_secret(ns), cluster_platform(ns))
    p = wait_condition(kube, "vezaplatform", "demo", ns, status="False", reason="PostgresNotReady")
    assert condition(p, "Degraded")["status"] == "True"
    assert "install CloudNativePG" in condition(p)["message"]
    assert kube.get("deployment", "demo-api", ns) is None, "nothing is rolled out towards a database not there"

    # The running operator (which may not watch Clusters yet) finds the Cluster and its health by itself.
    install_cloudnative_pg(kube)
    kube.apply(cluster(ns))
    app_secret(kube, ns)
    set_cluster_status(kube, ns, HEALTHY)
    wait_condition(kube, "vezaplatform", "demo", ns, reason="WorkersReady", timeout=90)
    assert secret_ref(api_env(kube, ns)["VEZA_DATABASE_URL"]) == ("veza-db-app", "uri")


@pytest.fixture
def replica(operator_install: Path, tmp_path: Path, cloudnative_pg: None,
            operator_stepped_aside: None) -> Iterator[OperatorProcess]:
    """An operator at the default resync (600 s): whatever it notices within a test, a watch event told it."""
    proc = OperatorProcess(operator_install, tmp_path / "operator.log",
                           extra_env={"POD_ID": "cnpg", "VEZA_RESYNC_SECONDS": "600"}).start()
    yield proc
    proc.stop()


@pytest.mark.kube
def test_the_platform_follows_its_clusters_health_and_wires_the_workers_to_it(
        kube: KubeCluster, replica: OperatorProcess) -> None:
    ns = kube.create_namespace("cnpg")
    try:
        kube.apply(connections_secret(ns), cluster(ns))
        app_secret(kube, ns)
        kube.apply(cluster_platform(ns))
        # Created, no status yet (CloudNativePG is setting it up): not Ready, but everything is rolled out.
        p = wait_condition(kube, "vezaplatform", "demo", ns, status="False", reason="PostgresNotReady")
        assert "no phase reported yet" in condition(p)["message"]
        assert condition(p, "Degraded")["status"] == "False" and condition(p, "Progressing")["status"] == "True"
        env = api_env(kube, ns)
        assert secret_ref(env["VEZA_DATABASE_URL"]) == ("veza-db-app", "uri")
        assert env["VEZA_DATABASE_READ_HOST"]["value"] == "veza-db-ro"
        assert env["VEZA_DATABASE_READ_MAX_LAG_SECONDS"]["value"] == "5"
        jobs = json.loads(kube.kubectl("get", "jobs", "-n", ns, "-o", "json"))["items"]
        (job,) = [j for j in jobs if j["metadata"]["name"].startswith("demo-migrate-")]
        assert secret_ref(env_of(job)["VEZA_DATABASE_URL"]) == ("veza-db-app", "uri")
        egress = kube.get("networkpolicy", "demo-allow-egress", ns)
        assert egress is not None
        assert {"to": [{"podSelector": {"matchLabels": {"cnpg.io/cluster": "veza-db"}}}],
                "ports": [{"protocol": "TCP", "port": 5432}]} in egress["spec"]["egress"]

        # Every change below reaches the platform through the watch on Clusters (no resync runs meanwhile).
        set_cluster_status(kube, ns, HEALTHY)
        wait_condition(kube, "vezaplatform", "demo", ns, reason="WorkersReady", timeout=60)
        set_cluster_status(kube, ns, "Failing over")
        p = wait_condition(kube, "vezaplatform", "demo", ns, status="False", reason="PostgresNotReady", timeout=15)
        assert "Failing over" in condition(p)["message"]
        set_cluster_status(kube, ns, HEALTHY)
        wait_condition(kube, "vezaplatform", "demo", ns, reason="WorkersReady", timeout=15)

        # Reads from a replica the platform engineer names instead of the cluster's -ro Service.
        kube.apply(cluster_platform(ns, cluster={"name": "veza-db"},
                                    read={"uriSecretRef": {"name": "veza-connections", "key": "read-uri"},
                                          "maxLagSeconds": 2}))
        kube.apply({**connections_secret(ns), "stringData": {**connections_secret(ns)["stringData"],
                                                             "read-uri": "postgresql://app:pw@replica:5432/app"}})

        def read_from_secret() -> dict[str, dict[str, Any]] | None:
            env = api_env(kube, ns)
            return env if "VEZA_DATABASE_READ_URL" in env else None

        env = wait_for(read_from_secret, timeout=30, message="demo-api reading from the read Secret")
        assert secret_ref(env["VEZA_DATABASE_READ_URL"]) == ("veza-connections", "read-uri")
        assert env["VEZA_DATABASE_READ_MAX_LAG_SECONDS"]["value"] == "2" and "VEZA_DATABASE_READ_HOST" not in env

        # The Cluster deleted: not Ready, and nothing of the platform is removed.
        kube.kubectl("delete", CLUSTERS, "veza-db", "-n", ns)
        p = wait_condition(kube, "vezaplatform", "demo", ns, status="False", reason="PostgresNotReady", timeout=15)
        assert "not found" in condition(p)["message"]
        assert kube.get("deployment", "demo-api", ns) is not None
    finally:
        kube.delete_namespace(ns)


@pytest.mark.kube
@pytest.mark.parametrize(("postgres", "message"), [
    ({"uriSecretRef": {"name": "db", "key": "uri"}, "cluster": {"name": "veza-db"}},
     "set exactly one of uriSecretRef and cluster"),
    ({"components": {}}, "set exactly one of uriSecretRef and cluster"),
    ({"uriSecretRef": {"name": "db", "key": "uri"}, "read": {}}, "read needs a uriSecretRef unless a cluster is named"),
])
def test_the_api_server_refuses_both_or_neither_database_and_a_read_without_source(
        kube: KubeCluster, operator_install: Path, postgres: dict[str, Any], message: str) -> None:
    body = cluster_platform("default", **postgres)
    result = kube.run("kubectl", "apply", "--server-side", "--dry-run=server", "--field-manager=veza-tests",
                      "-f", "-", input=yaml.safe_dump(body), check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


@pytest.mark.kube
@pytest.mark.usefixtures("cloudnative_pg")
def test_the_example_applies_and_its_platform_becomes_ready_once_the_cluster_is_healthy(kube: KubeCluster,
                                                                                         ns: str) -> None:
    kube.kubectl("apply", "-n", ns, "-f", str(EXAMPLE))
    for kind, name in (("objectstores.barmancloud.cnpg.io", "veza-db-backups"),
                       ("scheduledbackups.postgresql.cnpg.io", "veza-db-daily"), (CLUSTERS, "veza-db")):
        assert kube.get(kind, name, ns) is not None, f"{kind}/{name}"
    wait_condition(kube, "vezaplatform", "demo", ns, status="False", reason="PostgresNotReady")
    app_secret(kube, ns)  # labelled for the platform by the Cluster's inheritedMetadata
    set_cluster_status(kube, ns, HEALTHY)
    wait_condition(kube, "vezaplatform", "demo", ns, reason="WorkersReady", timeout=90)
    env = api_env(kube, ns)
    assert secret_ref(env["VEZA_DATABASE_URL"]) == ("veza-db-app", "uri")
    assert env["VEZA_DATABASE_READ_HOST"]["value"] == "veza-db-ro"
