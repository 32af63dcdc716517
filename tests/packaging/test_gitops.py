"""GitOps: Argo CD health checks (Lua, run with lupa) and kstatus rules applied to the statuses the
real operator writes; the operator's pods admitted under Pod Security "restricted"; the examples."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import LuaRuntime

from tests.support.kube import KubeCluster
from tests.support.operator import channel, connections_secret, platform, room, wait_condition
from tests.support.packaging import CHART, REPO, helm
from veza_local.controlplane import wait_for

pytestmark = pytest.mark.kube

EXAMPLES = REPO / "examples"
KINDS = ("VezaPlatform", "ChatRoom", "StreamChannel")
RESTRICTED = ["pod-security.kubernetes.io/enforce=restricted", "pod-security.kubernetes.io/enforce-version=latest"]


def argocd_scripts() -> dict[str, str]:
    cm = yaml.safe_load((EXAMPLES / "argocd" / "argocd-cm.yaml").read_text())
    return {key.removeprefix("resource.customizations.health.veza.io_"): script
            for key, script in cm["data"].items() if key.startswith("resource.customizations.health.veza.io_")}


def argocd_health(obj: dict[str, Any]) -> dict[str, str]:
    """What Argo CD's health assessment says: the shipped script run on the object, as Argo CD runs it."""
    lua = LuaRuntime(unpack_returned_tuples=True)
    check = lua.eval("function(obj) " + argocd_scripts()[obj["kind"]] + "\nend")
    result = check(lua.table_from(obj, recursive=True))
    return {"status": result["status"], "message": result["message"]}


def kstatus(obj: dict[str, Any]) -> str:
    """kstatus' generic rules for custom resources (what Flux's `wait` uses without healthCheckExprs)."""
    meta, status = obj["metadata"], obj.get("status") or {}
    if meta.get("deletionTimestamp"):
        return "Terminating"
    if "observedGeneration" in status and status["observedGeneration"] != meta.get("generation"):
        return "InProgress"
    conds = {c["type"]: c["status"] for c in status.get("conditions") or []}
    if conds.get("Reconciling") == "True":
        return "InProgress"
    if conds.get("Stalled") == "True":
        return "Failed"
    return "Current"


def test_shipped_scripts_are_health_lua_for_each_kind() -> None:
    scripts = argocd_scripts()
    assert set(scripts) == set(KINDS)
    source = (EXAMPLES / "argocd" / "health.lua").read_text()
    assert all(script == source for script in scripts.values()), "argocd-cm.yaml drifted from health.lua"


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        if expr["operator"] == "In" and labels.get(expr["key"]) not in expr["values"]:
            return False
        if expr["operator"] == "Exists" and expr["key"] not in labels:
            return False
    return True


def test_real_statuses_health_admission_and_scraping(kube: KubeCluster, ns: str) -> None:
    kube.kubectl("label", "namespace", ns, "--overwrite", *RESTRICTED)
    huge = {"requests": {"cpu": "100000", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}  # beyond any node
    kube.apply(connections_secret(ns), platform(ns), room(ns, "general", replicas=2, placement="Dedicated"),
               channel(ns, "radio"),
               room(ns, "busy", resources=huge, placement="Dedicated"),  # unschedulable: stays rolling out
               room(ns, "orphan", platform_name="missing"))
    objects = {
        "platform": wait_condition(kube, "vezaplatform", "demo", ns),
        "room": wait_condition(kube, "chatroom", "general", ns),
        "channel": wait_condition(kube, "streamchannel", "radio", ns),
        "busy": wait_condition(kube, "chatroom", "busy", ns, status="False", reason="RollingOut"),
        "orphan": wait_condition(kube, "chatroom", "orphan", ns, status="False", reason="PlatformNotFound"),
    }

    # Argo CD
    for key in ("platform", "room", "channel"):
        assert argocd_health(objects[key])["status"] == "Healthy", (key, objects[key]["status"])
    busy = argocd_health(objects["busy"])
    assert busy["status"] == "Progressing" and busy["message"].startswith("RollingOut: 0/1")
    orphan = argocd_health(objects["orphan"])
    assert orphan["status"] == "Degraded" and orphan["message"].startswith("PlatformNotFound: ")
    fresh = copy.deepcopy(objects["room"])
    del fresh["status"]
    assert argocd_health(fresh)["status"] == "Progressing"
    stale = copy.deepcopy(objects["room"])
    stale["metadata"]["generation"] += 1
    assert argocd_health(stale) == {"status": "Progressing",
                                    "message": f"Waiting for the Veza operator to observe generation "
                                               f"{stale['metadata']['generation']}"}

    # kstatus: metav1.Condition shape, observedGeneration tracking a spec change.
    reason = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    for key, obj in objects.items():
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"], key
        for cond in obj["status"]["conditions"]:
            assert cond["status"] in ("True", "False", "Unknown") and reason.match(cond["reason"]), cond
            assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", cond["lastTransitionTime"]), cond
            assert cond["observedGeneration"] == obj["metadata"]["generation"] and cond["message"]
        # Reconciling/Stalled mirror Progressing/Degraded: kstatus alone tells these apart.
        assert kstatus(obj) == {"busy": "InProgress", "orphan": "Failed"}.get(key, "Current"), key
    kube.kubectl("patch", "chatroom", "general", "-n", ns, "--type=merge", "-p", '{"spec":{"replicas":3}}')
    bumped = kube.get("chatroom", "general", ns)
    assert bumped is not None and bumped["metadata"]["generation"] == objects["room"]["metadata"]["generation"] + 1
    assert kstatus(bumped) in ("InProgress", "Current")
    settled = wait_for(lambda: (o := kube.get("chatroom", "general", ns)) and argocd_health(o)["status"] == "Healthy"
                       and o, timeout=60, message="room Healthy again after scaling to 3")
    assert settled["status"]["readyReplicas"] == 3 and kstatus(settled) == "Current"

    # Pod Security "restricted": every pod the operator creates was admitted.
    pods = json.loads(kube.kubectl("get", "pods", "-n", ns, "-o", "json"))["items"]
    by_component: dict[str, list[dict[str, Any]]] = {}
    for pod in pods:
        by_component.setdefault(pod["metadata"]["labels"].get("app.kubernetes.io/component", "?"), []).append(pod)
    assert len(by_component.get("chat", [])) >= 4, "general (3) and busy (1)"
    assert by_component.get("stream") and by_component.get("api")
    jobs = json.loads(kube.kubectl("get", "jobs", "-n", ns, "-o", "json"))["items"]
    assert jobs, "the migration Job"
    wait_for(lambda: kube.kubectl("get", "pods", "-n", ns, "-l", f"job-name={jobs[0]['metadata']['name']}",
                                  "-o", "name").strip(), timeout=30, message="migration pod admitted")
    events = json.loads(kube.kubectl("get", "events", "-n", ns, "-o", "json"))["items"]
    refused = [e["message"] for e in events if "PodSecurity" in e.get("message", "")]
    assert not refused, refused

    # The chart's PodMonitor selects exactly the operator's worker pods, on their "http" port.
    rendered = helm("template", "veza", str(CHART), "--api-versions", "monitoring.coreos.com/v1/PodMonitor",
                    "--show-only", "templates/monitoring.yaml").stdout
    monitor = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "PodMonitor")
    fresh_pods = json.loads(kube.kubectl("get", "pods", "-n", ns, "-o", "json"))["items"]
    workers = [p for p in fresh_pods if "job-name" not in p["metadata"]["labels"]]
    assert workers
    for pod in workers:
        assert selector_matches(monitor["spec"]["selector"], pod["metadata"]["labels"]), pod["metadata"]["labels"]
        ports = [p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])]
        assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in ports
        assert pod["metadata"]["labels"]["veza.io/platform"] == "demo"


def test_gitops_examples_pass_server_side_dry_run(kube: KubeCluster, ns: str) -> None:
    kube.apply(connections_secret(ns))
    rendered = kube.kubectl("kustomize", str(EXAMPLES / "gitops"))
    result = kube.run("kubectl", "apply", "--server-side", "--dry-run=server", "-n", ns, "-f", "-", input=rendered,
                      check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("serverside-applied") == 3


def test_argocd_and_flux_examples_point_at_the_chart_with_valid_values(tmp_path: Path) -> None:
    apps = [d for d in yaml.safe_load_all((EXAMPLES / "argocd" / "application.yaml").read_text()) if d]
    flux = {d["kind"]: d for d in yaml.safe_load_all((EXAMPLES / "flux" / "veza.yaml").read_text()) if d}
    assert {a["kind"] for a in apps} == {"Application"} and set(flux) == {"GitRepository", "HelmRelease",
                                                                         "Kustomization"}
    for app in apps:
        assert (REPO / app["spec"]["source"]["path"]).is_dir()
    assert flux["HelmRelease"]["spec"]["chart"]["spec"]["chart"] == "charts/veza"
    assert (REPO / flux["Kustomization"]["spec"]["path"]).is_dir()
    assert {e["kind"] for e in flux["Kustomization"]["spec"]["healthCheckExprs"]} == set(KINDS)
    for name, values in [("argocd", apps[0]["spec"]["source"]["helm"]["valuesObject"]),
                         ("flux", flux["HelmRelease"]["spec"]["values"])]:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(values))
        helm("lint", "--strict", str(CHART), "-f", str(path))


def test_irsa_annotation_on_a_precreated_service_account_survives_the_operator(kube: KubeCluster, ns: str) -> None:
    """terraform/examples/aws creates <platform>-api/-worker with the IRSA annotation before the operator
    runs, labelled as handed to the platform; the operator's server-side apply takes them over and keeps
    the annotation (without the label it would report a NameConflict and leave them alone)."""
    role = "arn:aws:iam::123456789012:role/veza-prod-workers"
    for sa in ("demo-api", "demo-worker"):
        kube.kubectl("create", "serviceaccount", sa, "-n", ns)
        kube.kubectl("annotate", "serviceaccount", sa, "-n", ns, f"eks.amazonaws.com/role-arn={role}")
        kube.kubectl("label", "serviceaccount", sa, "-n", ns, "veza.io/usable-by=demo")
    kube.apply(connections_secret(ns), platform(ns), room(ns, "lobby"))
    wait_condition(kube, "vezaplatform", "demo", ns)
    wait_condition(kube, "chatroom", "lobby", ns)
    for sa in ("demo-api", "demo-worker"):
        obj = kube.get("serviceaccount", sa, ns)
        assert obj is not None
        assert obj["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == role
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "veza-operator", "adopted"
    pod_sas = {p["spec"]["serviceAccountName"] for p in json.loads(
        kube.kubectl("get", "pods", "-n", ns, "-o", "json"))["items"]}
    assert {"demo-api", "demo-worker"} <= pod_sas
