"""The Kubernetes control plane does what the operator tests rely on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.kube import KubeCluster
from veza_local.controlplane import ControlPlane, wait_for

pytestmark = pytest.mark.kube

CHART = Path(__file__).parent / "testchart"


@pytest.fixture
def ns(kube: KubeCluster) -> Iterator[str]:
    name = kube.create_namespace("env")
    yield name
    kube.delete_namespace(name)


def test_server_reports_its_real_version(kube: KubeCluster) -> None:
    version = json.loads(kube.kubectl("version", "-o", "json"))["serverVersion"]
    assert version["major"] == "1" and int(version["minor"].rstrip("+")) >= 30
    assert version["gitVersion"].startswith("v1.")


def test_deployment_gets_replicaset_and_ready_pods(kube: KubeCluster, ns: str) -> None:
    kube.apply({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "example/web:1"}]}}},
    })
    deployment = wait_for(
        lambda: (d := kube.get("deployment", "web", ns)) and d["status"].get("readyReplicas") == 2 and d,
        timeout=60, message="2 ready replicas")
    assert deployment["status"]["availableReplicas"] == 2
    replicasets = json.loads(kube.kubectl("get", "replicasets", "-n", ns, "-o", "json"))["items"]
    assert len(replicasets) == 1
    assert replicasets[0]["metadata"]["ownerReferences"][0]["name"] == "web"
    pods = json.loads(kube.kubectl("get", "pods", "-n", ns, "-o", "json"))["items"]
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["nodeName"], "the scheduler bound the pod"
        assert pod["status"]["phase"] == "Running"


def test_deleting_an_owner_garbage_collects_children(kube: KubeCluster, ns: str) -> None:
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner", "namespace": ns}})
    owner = kube.get("configmap", "owner", ns)
    assert owner is not None
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": "child", "namespace": ns,
        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                             "uid": owner["metadata"]["uid"]}]}})
    kube.kubectl("delete", "configmap", "owner", "-n", ns)
    wait_for(lambda: kube.get("configmap", "child", ns) is None, timeout=90,
             message="child garbage-collected")


def test_crd_serves_custom_resources(kube: KubeCluster, ns: str) -> None:
    group = "envcheck.veza.io"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {"group": group, "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                 "versions": [{"name": "v1", "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                                   "spec": {"type": "object", "properties": {
                                       "size": {"type": "integer", "minimum": 1}}}}}}}]},
    }
    kube.apply(crd)
    kube.kubectl("wait", "--for=condition=Established", f"crd/widgets.{group}", "--timeout=60s")
    widget = {"apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": ns},
              "spec": {"size": 3}}
    wait_for(lambda: kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(widget), check=False),
             timeout=30, message="custom resource accepted")
    got = kube.get("widgets.envcheck.veza.io", "w", ns)
    assert got is not None and got["spec"]["size"] == 3
    # The schema is enforced by the real API server.
    bad = dict(widget, metadata={"name": "bad", "namespace": ns}, spec={"size": 0})
    result = kube.run("kubectl", "apply", "-f", "-", input=yaml.safe_dump(bad), check=False)
    assert result.returncode != 0 and "should be greater than or equal to 1" in result.stderr


def test_helm_template_and_install(kube: KubeCluster, ns: str) -> None:
    rendered = kube.helm("template", "rel", str(CHART), "--set", "message=templated").stdout
    [configmap] = [d for d in yaml.safe_load_all(rendered) if d]
    assert configmap["data"]["message"] == "templated"
    assert configmap["data"]["kubeVersion"].startswith("v1.3"), "helm targets a current Kubernetes"

    kube.helm("install", "rel", str(CHART), "-n", ns, "--set", "message=installed", "--wait", "--timeout=60s")
    installed = kube.get("configmap", "rel-config", ns)
    assert installed is not None and installed["data"]["message"] == "installed"
    status = json.loads(kube.helm("status", "rel", "-n", ns, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    kube.helm("uninstall", "rel", "-n", ns, "--wait")
    assert kube.get("configmap", "rel-config", ns) is None


def test_service_account_tokens_are_subject_to_rbac(kube: KubeCluster, ns: str, tmp_path: Path) -> None:
    kube.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader", "namespace": ns}})
    config = kube.service_account_kubeconfig(ns, "reader", tmp_path / "reader.kubeconfig")
    as_reader = KubeCluster(config)
    denied = as_reader.run("kubectl", "get", "configmaps", "-n", ns, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    kube.apply(
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "read-cm", "namespace": ns},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "read-cm", "namespace": ns},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-cm"},
         "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}]},
    )
    wait_for(lambda: as_reader.run("kubectl", "get", "configmaps", "-n", ns, check=False).returncode == 0,
             timeout=10, message="RBAC grant takes effect")


def test_audit_log_counts_write_requests(kube: KubeCluster, ns: str) -> None:
    if kube.plane is None:
        pytest.skip("audit log is only readable on the local control plane")
    before = len(kube.plane.audit_events())
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "audited", "namespace": ns}})

    def audited() -> bool:
        return any(e["objectRef"].get("name") == "audited" and e["verb"] == "patch"
                   for e in kube.plane.audit_events()[before:])  # type: ignore[union-attr]

    wait_for(audited, timeout=10, message="the write shows in the audit log")


def test_a_line_the_api_server_is_still_writing_is_left_for_the_next_read(tmp_path: Path) -> None:
    plane = ControlPlane(tmp_path)
    whole = {"verb": "create", "objectRef": {"name": "a"}}
    plane.audit_log.write_text(json.dumps(whole) + "\n" + '{"verb":"delete","objectRef":{"na')
    assert plane.audit_events() == [whole]
    with plane.audit_log.open("a") as log:
        log.write('me":"b"}}\n')
    assert [e["objectRef"]["name"] for e in plane.audit_events()] == ["a", "b"]
