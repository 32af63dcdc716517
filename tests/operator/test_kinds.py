"""The registry of kinds (`veza_operator.kinds`) is what everything else derives from; the chart's RBAC grants it."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from tests.support.operator import REPO
from veza_local.controlplane import tool
from veza_operator import crds, handlers, kinds
from veza_operator.kube import ApiKind
from veza_operator.settings import Settings

# What kopf itself needs besides our kinds: CRD discovery (optional APIs installed later) and peering.
KOPF_RULES = {("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
              ("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"},
              ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"}}


def rbac(*values: str) -> list[dict[str, Any]]:
    out = subprocess.run([tool("helm"), "template", "veza", str(REPO / "charts" / "veza"), "--namespace",
                          "veza-system", "--show-only", "templates/rbac.yaml", *values],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def rules_of(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    rules: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                rules.setdefault((group, resource), set()).update(rule["verbs"])
    return rules


def granted() -> dict[tuple[str, str], set[str]]:
    """(API group, resource) -> verbs the chart's ClusterRole grants the operator (watching every namespace)."""
    return rules_of(next(d for d in rbac() if d["kind"] == "ClusterRole"))


def needed() -> dict[tuple[str, str], set[str]]:
    """(API group, resource) -> verbs the operator uses, from the registry."""
    needs: dict[tuple[str, str], set[str]] = {}
    for api in kinds.API.values():
        needs.setdefault((api.group, api.plural), set()).update(api.verbs)
    for owner in kinds.OWNERS:
        for sub, verbs in owner.subresource_verbs.items():
            needs.setdefault((owner.api.group, f"{owner.plural}/{sub}"), set()).update(verbs)
    return needs


def test_the_charts_rbac_grants_every_verb_the_operator_uses_on_every_kind() -> None:
    rules = granted()
    missing = {key: sorted(verbs - rules.get(key, set())) for key, verbs in {**needed(), **KOPF_RULES}.items()
               if verbs - rules.get(key, set())}
    assert not missing, f"charts/veza/templates/rbac.yaml lacks: {missing}"


def test_the_charts_rbac_grants_nothing_the_registry_does_not_list() -> None:
    extra = {key: sorted(verbs - {**needed(), **KOPF_RULES}.get(key, set())) for key, verbs in granted().items()
             if verbs - {**needed(), **KOPF_RULES}.get(key, set())}
    assert not extra, f"least privilege: the chart grants more than the operator uses: {extra}"


def test_children_are_watched_pruned_and_applied_as_the_registry_says() -> None:
    for child in kinds.CHILDREN:
        assert child.watched and child.prunable and {"get", "list", "watch", "patch", "delete"} <= child.verbs
    secret = kinds.API["Secret"]
    assert not secret.prunable and not secret.watched and "delete" not in secret.verbs, "never the keys"
    assert {k.kind for k in kinds.CHILDREN if k.optional} == {"ServiceMonitor", "HTTPRoute", "ScaledObject"}
    # Read only: a CloudNativePG Cluster is watched whole (it is not ours to label) for its status.
    assert [(k.kind, k.verbs, k.optional, k.prunable) for k in kinds.REFERENCED] == [
        ("Cluster", frozenset({"get", "list", "watch"}), True, False)]
    assert {"Deployment", "Job", "HTTPRoute", "Cluster"} == kinds.STATUS_READ


def test_owner_kinds_feed_the_crds_the_reconciler_and_the_watches() -> None:
    assert crds.KINDS == kinds.OWNERS
    assert set(kinds.RECONCILERS) == {"VezaPlatform", "ChatRoom", "StreamChannel"}
    assert {f"{o.plural}.veza.io.yaml" for o in kinds.OWNERS} <= set(crds.all_crds())
    runtime = handlers.Runtime(client=None, settings=Settings())  # type: ignore[arg-type]
    assert runtime.reconciler.handlers == kinds.RECONCILERS
    assert runtime.ctx.prunable == kinds.PRUNABLE and runtime.store.status_read == kinds.STATUS_READ


@pytest.mark.parametrize(("api", "path"), [
    (kinds.API["Deployment"], "/apis/apps/v1"), (kinds.API["Service"], "/api/v1"),
    (kinds.API["ChatRoom"], "/apis/veza.io/v1alpha1"), (kinds.API["HorizontalPodAutoscaler"], "/apis/autoscaling/v2"),
])
def test_api_paths(api: ApiKind, path: str) -> None:
    assert api.prefix == path


NAMESPACED = ("--set", "operator.watchNamespaces={team-a,team-b}")


def test_watching_namespaces_grants_the_same_rules_in_those_namespaces_only() -> None:
    docs = rbac(*NAMESPACED)
    roles = [d for d in docs if d["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    cluster_wide = {**needed(), **KOPF_RULES}
    for role in roles:
        assert rules_of(role) == {k: v for k, v in cluster_wide.items() if k != ("kopf.dev", "clusterkopfpeerings")
                                  and k[1] != "customresourcedefinitions"}
    cluster_role = next(d for d in docs if d["kind"] == "ClusterRole")
    assert rules_of(cluster_role) == {("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"}}
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert {(b["metadata"]["namespace"], b["roleRef"]["kind"]) for b in bindings} == {
        ("team-a", "Role"), ("team-b", "Role")}
