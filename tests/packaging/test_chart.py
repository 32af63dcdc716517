"""The Helm chart: lint, templates accepted by the real API server, install/upgrade/uninstall,
and Pod Security "restricted" admission of every pod it creates."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.kube import KubeCluster
from tests.support.packaging import CHART, MONITORING_APIS, REPO, VALUE_SETS, assert_checkov_clean, helm, values_args
from veza_local.controlplane import wait_for

VALUES = Path(__file__).parent / "values"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}


def render(*args: str) -> list[dict[str, Any]]:
    out = helm("template", "veza", str(CHART), "--namespace", "veza-system", *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def kinds(docs: list[dict[str, Any]]) -> set[str]:
    return {d["kind"] for d in docs}


# -- without a cluster ------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS)
def test_lint_strict(values: str) -> None:
    result = helm("lint", "--strict", str(CHART), *values_args(values))
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(("override", "message"), [
    ("operator.replicas=0", "minimum"),
    ("operator.logLevel=LOUD", "operator/logLevel"),
    ("operator.peering=Not_A_Name", "operator/peering"),
    ("image.digest=latest", "image/digest"),
    ("surprise=1", "additional properties 'surprise' not allowed"),
    ("examples.enabled=true", "examples/platform/spec"),
])
def test_values_schema_rejects_bad_values(override: str, message: str) -> None:
    result = helm("lint", "--strict", str(CHART), "--set", override, check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def test_chart_crds_are_the_generated_crds() -> None:
    chart_crds = {p.name: p.read_text() for p in (CHART / "crds").glob("*.yaml")}
    assert chart_crds == {p.name: p.read_text() for p in (REPO / "crds").glob("*.yaml")}
    assert {"vezaplatforms.veza.io.yaml", "chatrooms.veza.io.yaml", "streamchannels.veza.io.yaml",
            "clusterkopfpeerings.kopf.dev.yaml", "kopfpeerings.kopf.dev.yaml"} <= set(chart_crds)


def test_operator_deployment_runs_the_veza_operator_with_peering_and_restricted_contexts() -> None:
    docs = render()
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["operator", "--peering=veza", "--liveness-port=8080", "--metrics-port=9090",
                                 "--log-level=INFO"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {p["containerPort"] for p in container["ports"]} == {8080, 9090}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"] == {
        "drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
    assert pod["serviceAccountName"] == "veza"
    peering = next(d for d in docs if d["kind"] == "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "veza"
    namespaced = render("-f", str(VALUES / "namespaced.yaml"))
    args = next(d for d in namespaced if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0][
        "args"]
    assert "--namespace=veza-team-a" in args and "--namespace=veza-team-b" in args
    assert sorted(d["metadata"]["namespace"] for d in namespaced if d["kind"] == "KopfPeering") == [
        "veza-team-a", "veza-team-b"]
    image = next(d for d in namespaced if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0][
        "image"]
    assert image == "ghcr.io/veza-platform/veza@sha256:" + "0" * 64


def test_operator_contract_templates_still_render() -> None:
    """tests/operator/conftest.py renders exactly these three templates with serviceAccount.name=veza."""
    docs = render("--set", "serviceAccount.name=veza", "--show-only", "templates/serviceaccount.yaml",
                  "--show-only", "templates/rbac.yaml", "--show-only", "templates/peering.yaml")
    assert kinds(docs) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"}


def test_operator_rbac_on_the_gateway_api_is_httproutes_only() -> None:
    """Least privilege: the operator manages HTTPRoutes; it reads no Gateway and writes no ReferenceGrant."""
    role = next(d for d in render("--show-only", "templates/rbac.yaml") if d["kind"] == "ClusterRole")
    rules = [r for r in role["rules"] if "gateway.networking.k8s.io" in r["apiGroups"]]
    assert rules == [{"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes"],
                      "verbs": ["get", "list", "watch", "create", "patch", "delete"]}]


def test_monitoring_objects_only_when_their_api_is_served() -> None:
    assert not kinds(render()) & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    with_api = render(*[a for api in MONITORING_APIS for a in ("--api-versions", api)])
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= kinds(with_api)
    assert "ConfigMap" in kinds(render()), "the dashboard ConfigMap needs no extra API"


# -- against the API server ----------------------------------------------------------------

STAND_IN_CRDS = [("servicemonitors", "ServiceMonitor"), ("podmonitors", "PodMonitor"),
                 ("prometheusrules", "PrometheusRule")]


@pytest.fixture(scope="module")
def prometheus_operator_api(kube: KubeCluster) -> Iterator[None]:
    """Stand-ins for the Prometheus Operator's CRDs (same group, version and kinds, schema-less).

    The real CRDs cannot be downloaded here; these make the API server serve
    monitoring.coreos.com/v1 so that `.Capabilities.APIVersions.Has` sees it.
    """
    crds = [{"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
             "metadata": {"name": f"{plural}.monitoring.coreos.com"},
             "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                      "names": {"plural": plural, "singular": kind.lower(), "kind": kind},
                      "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                          "type": "object", "properties": {"spec": {
                              "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}]}}
            for plural, kind in STAND_IN_CRDS]
    kube.apply(*crds)
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                 *[f"crd/{plural}.monitoring.coreos.com" for plural, _ in STAND_IN_CRDS])
    yield
    kube.kubectl("delete", "--wait=false", *[f"crd/{plural}.monitoring.coreos.com" for plural, _ in STAND_IN_CRDS])


@pytest.fixture(scope="module")
def chart_crds(kube: KubeCluster) -> None:
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                 *[f"crd/{p.name.removesuffix('.yaml')}" for p in (CHART / "crds").glob("*.yaml")])


@pytest.mark.kube
@pytest.mark.parametrize("values", VALUE_SETS)
@pytest.mark.usefixtures("chart_crds", "prometheus_operator_api")
def test_rendered_chart_passes_server_side_dry_run(kube: KubeCluster, values: str) -> None:
    namespace = kube.create_namespace("dry")
    rendered = helm("template", "veza", str(CHART), "--namespace", namespace, *values_args(values),
                    *[a for api in MONITORING_APIS for a in ("--api-versions", api)]).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    for other in {d["metadata"].get("namespace") for d in docs} - {None, namespace}:
        kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}})
    result = kube.run("kubectl", "apply", "--server-side", "--dry-run=server", "--field-manager=helm",
                      "-f", "-", input=rendered, check=False)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    applied = result.stdout.count("serverside-applied")
    assert applied == len(docs), result.stdout
    if values == "examples":
        assert {"VezaPlatform", "ChatRoom", "StreamChannel"} <= kinds(docs)
    kube.delete_namespace(namespace)


@pytest.mark.kube
@pytest.mark.usefixtures("prometheus_operator_api")
def test_helm_sees_the_monitoring_api_of_the_cluster(kube: KubeCluster) -> None:
    namespace = kube.create_namespace("mon")
    out = kube.helm("install", f"mon-{secrets.token_hex(3)}", str(CHART), "--namespace", namespace,
                    "--dry-run=server", "--set", f"operator.peering=mon-{namespace}").stdout
    found = kinds([d for d in yaml.safe_load_all(out.split("NOTES:")[0].split("MANIFEST:")[-1]) if d])
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= found
    assert "Prometheus Operator found" in out
    kube.delete_namespace(namespace)


def deployment_available(kube: KubeCluster, name: str, ns: str, replicas: int) -> dict[str, Any] | None:
    dep = kube.get("deployment", name, ns)
    if not dep:
        return None
    status = dep.get("status") or {}
    available = any(c["type"] == "Available" and c["status"] == "True" for c in status.get("conditions") or [])
    ok = available and status.get("availableReplicas") == replicas and status.get("updatedReplicas") == replicas
    return dep if ok and status.get("observedGeneration") == dep["metadata"]["generation"] else None


@pytest.mark.kube
def test_install_upgrade_uninstall_in_a_restricted_namespace(kube: KubeCluster) -> None:
    namespace = kube.create_namespace("psa", labels=RESTRICTED)
    release = f"vz-{secrets.token_hex(3)}"
    fullname = f"{release}-veza"
    peering = f"{release}-peering"
    try:
        # Pod Security admission really enforces "restricted" here: a root, privileged pod is refused.
        bad = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad", "namespace": namespace},
               "spec": {"containers": [{"name": "c", "image": "busybox",
                                        "securityContext": {"privileged": True}}]}}
        refused = kube.run("kubectl", "apply", "--dry-run=server", "-f", "-", input=json.dumps(bad), check=False)
        assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr

        kube.helm("install", release, str(CHART), "--namespace", namespace, "--set", f"operator.peering={peering}",
                  "--wait", "--timeout=120s")
        kube.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/vezaplatforms.veza.io",
                     "crd/chatrooms.veza.io", "crd/streamchannels.veza.io", "crd/clusterkopfpeerings.kopf.dev")
        dep = wait_for(lambda: deployment_available(kube, f"{fullname}-operator", namespace, 2), timeout=60,
                       message="operator Deployment Available with 2 replicas")
        pods = json.loads(kube.kubectl("get", "pods", "-n", namespace, "-o", "json"))["items"]
        assert len(pods) == 2 and all(p["status"]["phase"] == "Running" for p in pods)
        assert kube.get("clusterkopfpeering", peering) is not None
        for kind, name in [("serviceaccount", fullname), ("service", f"{fullname}-operator-metrics"),
                           ("networkpolicy", f"{fullname}-operator"), ("poddisruptionbudget", f"{fullname}-operator"),
                           ("configmap", f"{fullname}-dashboard")]:
            assert kube.get(kind, name, namespace) is not None, f"{kind}/{name}"
        assert kube.get("clusterrole", f"{fullname}-operator") is not None
        notes = kube.helm("get", "notes", release, "--namespace", namespace).stdout
        assert f"deployment/{fullname}-operator" in notes

        kube.helm("upgrade", release, str(CHART), "--namespace", namespace, "--reuse-values",
                  "--set", "operator.replicas=3", "--set", "operator.logLevel=DEBUG", "--wait", "--timeout=120s")
        dep = wait_for(lambda: deployment_available(kube, f"{fullname}-operator", namespace, 3), timeout=60,
                       message="upgraded operator Deployment Available with 3 replicas")
        assert "--log-level=DEBUG" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
        history = json.loads(kube.helm("history", release, "--namespace", namespace, "-o", "json").stdout)
        assert [h["status"] for h in history] == ["superseded", "deployed"]
        replicasets = json.loads(kube.kubectl("get", "replicasets", "-n", namespace, "-o", "json"))["items"]
        for rs in replicasets:  # no pod of either revision was refused by admission
            assert not [c for c in rs["status"].get("conditions") or [] if c["type"] == "ReplicaFailure"], rs

        kube.helm("uninstall", release, "--namespace", namespace, "--wait", "--timeout=120s")
        assert kube.get("deployment", f"{fullname}-operator", namespace) is None
        assert kube.get("clusterrole", f"{fullname}-operator") is None
        assert kube.get("clusterrolebinding", f"{fullname}-operator") is None
        assert kube.get("clusterkopfpeering", peering) is None
        assert kube.kubectl("get", "secrets", "-n", namespace, "-l", f"name={release},owner=helm", "-o",
                            "name").strip() == "", "no release record left"
        # Helm never deletes CRDs from crds/ (custom resources would go with them).
        assert kube.get("crd", "vezaplatforms.veza.io") is not None
    finally:
        kube.helm("uninstall", release, "--namespace", namespace, "--ignore-not-found", check=False)
        kube.delete_namespace(namespace)


def test_checkov_rendered_chart_is_clean(checkov_reports: dict[str, dict[str, Any]]) -> None:
    """checkov over the chart rendered with every values set and every optional API."""
    report = checkov_reports["kubernetes"]
    assert_checkov_clean(report)
    assert report["summary"]["resource_count"] >= 40
    skipped = {c["check_id"] for c in report["results"]["skipped_checks"]}
    assert skipped <= {"CKV_K8S_38", "CKV_K8S_43", "CKV_K8S_15"}, skipped


def test_the_relay_deny_list_is_the_operators_setting() -> None:
    def operator_env(*args: str) -> dict[str, str | None]:
        operator = next(d for d in render(*args) if d["kind"] == "Deployment")
        return {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}

    denied = operator_env("--set", "operator.relayDeniedNetworks={10.96.0.0/12,10.244.0.0/16}")
    assert denied["VEZA_RELAY_DENIED_NETWORKS"] == "10.96.0.0/12,10.244.0.0/16"
    assert "VEZA_RELAY_DENIED_NETWORKS" not in operator_env()


def test_operator_traces_go_where_the_values_say_and_the_policy_lets_them() -> None:
    def operator(*args: str) -> tuple[dict[str, str | None], list[dict[str, Any]]]:
        docs = render(*args)
        deployment = next(d for d in docs if d["kind"] == "Deployment")
        policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
        env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        return env, policy["spec"]["egress"]

    env, egress = operator()
    assert not any(k.startswith("OTEL_") for k in env)
    env, traced = operator("--set", "operator.tracing.otlpEndpoint=http://jaeger.monitoring:4318",
                           "--set-json", "operator.tracing.samplingRatio=0.5")
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger.monitoring:4318"
    assert (env["OTEL_TRACES_SAMPLER"], env["OTEL_TRACES_SAMPLER_ARG"]) == ("parentbased_traceidratio", "0.5")
    assert traced[:-1] == egress and traced[-1] == {"ports": [{"port": 4318, "protocol": "TCP"}]}
    assert operator("--set", "operator.tracing.otlpEndpoint=https://otel.example.com")[1][-1] == {
        "ports": [{"port": 443, "protocol": "TCP"}]}
