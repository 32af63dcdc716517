"""Pure builders for the Kubernetes objects every workload needs.

Each takes plain values and returns a manifest dict; nothing here talks to the
API server. `platform.py`, `chatroom.py` and `streamchannel.py` compose them.
Pods follow Pod Security "restricted": non-root, read-only root filesystem,
no privilege escalation, all capabilities dropped, RuntimeDefault seccomp.
"""

from __future__ import annotations

import ipaddress
import posixpath
from dataclasses import dataclass, field
from typing import Any

from . import wiring
from .models import ANYWHERE, METADATA_ADDRESSES, EgressPeers, Image, NamespaceSelector, Resources
from .naming import Owner, metadata

WORKER_UID = 10001


@dataclass(frozen=True)
class Workload:
    """One worker Deployment and what exposes it."""

    owner: Owner
    name: str
    component: str  # api | chat | stream
    args: list[str]
    image: Image
    replicas: int | None  # None: an autoscaler owns them (the operator's apply leaves the field out)
    resources: Resources
    env: dict[str, wiring.EnvValue]
    selector: dict[str, str]
    service_account: str
    keys_secret: str
    keys_items: tuple[str, ...] = ("jwks.json",)
    metrics: bool = True
    extra_labels: dict[str, str] = field(default_factory=dict)

    @property
    def labels(self) -> dict[str, str]:
        return {**self.selector, **self.extra_labels}


def container(w: Workload, *, serving: bool = True) -> dict[str, Any]:
    """The worker container; `serving` adds the HTTP port and probes (not for Jobs)."""
    # Probed every 2 s: a new worker is Ready about a second after it can answer (a promoted room waits on it, the
    # clients' reconnect with it); three failures (6 s) take an unready one out of its Service.
    probe = {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 2, "failureThreshold": 3}
    spec: dict[str, Any] = {
        "name": w.component,
        "image": w.image.reference,
        "imagePullPolicy": w.image.pullPolicy,
        "args": w.args,
        # POD_IP: how replicas reach each other (a stream follower forwards a live source to its leader).
        "env": [*wiring.to_k8s_env(w.env),
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "resources": {"requests": dict(w.resources.requests), "limits": dict(w.resources.limits)},
        "securityContext": {
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "runAsUser": WORKER_UID, "runAsGroup": WORKER_UID,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "jwt-keys", "mountPath": wiring.JWT_KEYS_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - a private emptyDir: the root fs is read-only
            *({"name": name, "mountPath": directory, "readOnly": True}
              for name, directory, _ in secret_file_volumes(w)),
        ],
    }
    if serving:
        spec["ports"] = [{"name": "http", "containerPort": wiring.HTTP_PORT, "protocol": "TCP"}]
        spec["readinessProbe"] = probe
        spec["livenessProbe"] = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10,
                                 "failureThreshold": 3}
    return spec


def secret_file_volumes(w: Workload) -> list[tuple[str, str, list[wiring.SecretFile]]]:
    """The directories of the workload's secret files (`wiring.SecretFile`): (volume name, directory, files).

    One projected volume per directory, so that files of several Secrets share it (a NATS .creds file
    and the NATS CA); a Secret's update reaches the files (no subPath).
    """
    by_dir: dict[str, list[wiring.SecretFile]] = {}
    for f in wiring.secret_files(w.env):
        by_dir.setdefault(posixpath.dirname(f.path), []).append(f)
    return [(f"secret-{posixpath.basename(d)}", d, files) for d, files in sorted(by_dir.items())]


def pod_spec(w: Workload, *, serving: bool = True) -> dict[str, Any]:
    return {
        "serviceAccountName": w.service_account,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {"runAsNonRoot": True, "runAsUser": WORKER_UID, "fsGroup": WORKER_UID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container(w, serving=serving)],
        "volumes": [
            {"name": "jwt-keys", "secret": {
                "secretName": w.keys_secret,
                "items": [{"key": item, "path": item} for item in w.keys_items]}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
            # Readable by the workers' group (fsGroup) only.
            *({"name": name, "projected": {"defaultMode": 0o440, "sources": [
                {"secret": {"name": f.secret, "items": [{"key": f.key, "path": posixpath.basename(f.path)}]}}
                for f in files]}} for name, _, files in secret_file_volumes(w)),
        ],
    }


def deployment(w: Workload) -> dict[str, Any]:
    annotations = {}
    if w.metrics:
        annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(wiring.HTTP_PORT),
                       "prometheus.io/path": "/metrics"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(w.name, w.owner, w.labels),
        "spec": {
            **({"replicas": w.replicas} if w.replicas is not None else {}),
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": dict(w.selector)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": w.labels, **({"annotations": annotations} if annotations else {})},
                "spec": pod_spec(w),
            },
        },
    }


def job(w: Workload, *, backoff_limit: int = 6) -> dict[str, Any]:
    """A run-to-completion Job of the worker image (e.g. `veza migrate`)."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(w.name, w.owner, w.labels),
        "spec": {"backoffLimit": backoff_limit,
                 "template": {"metadata": {"labels": w.labels},
                              "spec": {**pod_spec(w, serving=False), "restartPolicy": "OnFailure"}}},
    }


def service(w: Workload) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(w.name, w.owner, w.labels),
        "spec": {"type": "ClusterIP", "selector": dict(w.selector),
                 "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]},
    }


def ingress(name: str, owner: Owner, *, host: str, paths: list[tuple[str, str]], class_name: str | None,
            tls_secret: str | None, annotations: dict[str, str], labels: dict[str, str]) -> dict[str, Any]:
    """An Ingress routing path prefixes of the platform's host to Services (port 80)."""
    spec: dict[str, Any] = {"rules": [{"host": host, "http": {"paths": [
        {"path": path, "pathType": "Prefix",
         "backend": {"service": {"name": svc, "port": {"name": "http"}}}} for path, svc in paths]}}]}
    if class_name:
        spec["ingressClassName"] = class_name
    if tls_secret:
        spec["tls"] = [{"hosts": [host], "secretName": tls_secret}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": metadata(name, owner, labels, annotations or None), "spec": spec}


GATEWAY_GROUP = "gateway.networking.k8s.io"


def http_route(name: str, owner: Owner, *, host: str, paths: list[tuple[str, str]], parent: dict[str, Any],
               labels: dict[str, str]) -> dict[str, Any]:
    """A Gateway API HTTPRoute: path prefixes of the platform's host to Services (port 80), no rewrite.

    What `ingress` routes, attached to the Gateway `parent` (a parentRef).
    """
    return {"apiVersion": f"{GATEWAY_GROUP}/v1", "kind": "HTTPRoute", "metadata": metadata(name, owner, labels),
            "spec": {"parentRefs": [parent], "hostnames": [host], "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": path}}],
                 "backendRefs": [{"kind": "Service", "name": svc, "port": 80}]} for path, svc in paths]}}


def pod_disruption_budget(w: Workload) -> dict[str, Any]:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": metadata(w.name, w.owner, w.labels),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(w.selector)}}}


def scaling_behavior(scale_down_seconds: int = 300) -> dict[str, Any]:
    """The HPA's pace: up at most doubling every 30 s; down one pod a minute once the load has stayed low for
    `scale_down_seconds` (a burst that ends does not take pods away at once)."""
    return {"scaleDown": {"stabilizationWindowSeconds": scale_down_seconds,
                          "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]},
            "scaleUp": {"stabilizationWindowSeconds": 30,
                        "policies": [{"type": "Percent", "value": 100, "periodSeconds": 30}]}}


def autoscaler(name: str, owner: Owner, labels: dict[str, str], *, min_replicas: int, max_replicas: int,
               metric: str, target_per_pod: int, scale_down_seconds: int = 300) -> dict[str, Any]:
    """An HPA that scales the custom resource itself (its scale subresource) on a per-pod worker metric.

    Scaling the custom resource rather than the Deployment keeps `.spec.replicas`
    the one source of truth; the metric reaches the HPA through a custom-metrics
    adapter such as prometheus-adapter.
    """
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(name, owner, labels),
        "spec": {
            "scaleTargetRef": {"apiVersion": owner.reference()["apiVersion"], "kind": owner.kind,
                               "name": owner.name},
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "metrics": [{"type": "Pods", "pods": {"metric": {"name": metric},
                                                  "target": {"type": "AverageValue",
                                                             "averageValue": str(target_per_pod)}}}],
            "behavior": scaling_behavior(scale_down_seconds),
        },
    }


def scaled_object(name: str, owner: Owner, labels: dict[str, str], *, target: dict[str, str], min_replicas: int,
                  max_replicas: int, triggers: list[dict[str, Any]], polling_seconds: int,
                  scale_down_seconds: int) -> dict[str, Any]:
    """A KEDA ScaledObject scaling `target` (a scale subresource's owner: apiVersion, kind, name) on
    `triggers`; KEDA makes the HPA (named like this object) and feeds it the triggers' values."""
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": metadata(name, owner, labels),
        "spec": {
            "scaleTargetRef": dict(target),
            "pollingInterval": polling_seconds,
            "minReplicaCount": min_replicas,
            "maxReplicaCount": max_replicas,
            "advanced": {"horizontalPodAutoscalerConfig": {"name": name,
                                                           "behavior": scaling_behavior(scale_down_seconds)}},
            "triggers": triggers,
        },
    }


def prometheus_trigger(name: str, server: str, query: str, per_replica: int) -> dict[str, Any]:
    """A KEDA Prometheus trigger: replicas = ceil(`query`'s value / `per_replica`) (an empty answer is 0)."""
    return {"type": "prometheus", "name": name, "metricType": "AverageValue",
            "metadata": {"serverAddress": server, "query": query, "threshold": str(per_replica),
                         "ignoreNullValues": "true"}}


def service_account(name: str, owner: Owner, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata(name, owner, labels),
            "automountServiceAccountToken": False}


def label_selector(selector: NamespaceSelector) -> dict[str, Any]:
    """A metav1.LabelSelector from the spec's model (empty: everything)."""
    out: dict[str, Any] = {}
    if selector.matchLabels:
        out["matchLabels"] = dict(selector.matchLabels)
    if selector.matchExpressions:
        out["matchExpressions"] = [
            {"key": e.key, "operator": e.operator, **({"values": list(e.values)} if e.values else {})}
            for e in selector.matchExpressions]
    return out


def ip_block(cidr: str) -> dict[str, Any]:
    """An egress ipBlock that never reaches a cloud metadata address, however wide `cidr` is."""
    network = ipaddress.ip_network(cidr, strict=False)
    excepted = [m for m in METADATA_ADDRESSES if (meta := ipaddress.ip_network(m)).version == network.version
                and meta.subnet_of(network)]  # type: ignore[arg-type]
    return {"ipBlock": {"cidr": str(network), **({"except": excepted} if excepted else {})}}


def egress_peers(peers: EgressPeers) -> list[dict[str, Any]]:
    """NetworkPolicy `to` peers: the CIDRs (metadata addresses excepted) and the namespaces' pods."""
    out = [ip_block(cidr) for cidr in peers.cidrs]
    if peers.namespaceSelector is not None:
        out.append({"namespaceSelector": label_selector(peers.namespaceSelector)})
    return out


def internet() -> list[dict[str, Any]]:
    """Every address but the metadata ones, and every namespace's pods."""
    return egress_peers(EgressPeers(cidrs=list(ANYWHERE), namespaceSelector=NamespaceSelector()))


def tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port} for port in sorted(set(ports))]


def network_policy(name: str, owner: Owner, labels: dict[str, str], pods: dict[str, Any], *,
                   ingress: list[dict[str, Any]] | None = None,
                   egress: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A NetworkPolicy of the pods `pods` selects; a direction given (even empty: deny all) is governed."""
    spec: dict[str, Any] = {"podSelector": pods, "policyTypes": []}
    for direction, rules in (("Ingress", ingress), ("Egress", egress)):
        if rules is not None:
            spec["policyTypes"].append(direction)
            if rules:
                spec[direction.lower()] = rules
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": metadata(name, owner, labels), "spec": spec}
