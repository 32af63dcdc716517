"""VezaPlatform: the API Deployment, the Ingress or HTTPRoute, the JWT keys, migrations, and policies.

The JWT key Secret is created once when absent and never rewritten: rotating
keys is an explicit operation (docs/api.md, "Keys and rotation"), not a side effect of a
reconcile. Rooms and channels get their own Ingress (and HTTPRoute) objects on the same
host (Ingress controllers and Gateways merge them), so adding a room never rewrites a
shared object.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from pydantic import ValidationError

from veza_core import keys as jwt_keys

from . import frontdoor, manifests, wiring
from .conditions import Health, conditions, ready_reason, workers_health
from .controller import Context, Key, post_event
from .models import VezaPlatformSpec, describe_error
from .naming import PLATFORM_LABEL, Owner, metadata, selector_labels
from .workers import platform_service_account

API_COMPONENT = "api"


def api_name(platform: str) -> str:
    return f"{platform}-api"


def migration_job_name(platform: str, spec: VezaPlatformSpec) -> str:
    """One Job per worker version: a new image runs its migrations once."""
    version = hashlib.sha256(f"{spec.image.repository}:{spec.image.tag}".encode()).hexdigest()[:8]
    return f"{platform}-migrate-{version}"


def api_workload(owner: Owner, spec: VezaPlatformSpec, name: str, component: str, replicas: int
                 ) -> manifests.Workload:
    """The API server (component "api") or the migration Job (component "migrate") of a platform."""
    return manifests.Workload(
        owner=owner, name=name, component=component, args=[component], image=spec.image, replicas=replicas,
        resources=spec.api.resources, env=wiring.worker_env(owner.name, owner.namespace, spec, API_COMPONENT),
        selector=selector_labels(owner.name, component, owner.name),
        service_account=f"{owner.name}-api", keys_secret=wiring.keys_secret_name(owner.name, spec),
        keys_items=(jwt_keys.PUBLIC_KEYS_FILE, jwt_keys.SIGNING_KEYS_FILE),
        metrics=spec.observability.metrics.enabled,
    )


def network_policies(owner: Owner, spec: VezaPlatformSpec) -> list[dict[str, Any]]:
    """Default-deny for every pod of the platform, then HTTP from the front door and each other.

    The front door (Ingress controller or Gateway proxies) is found by the namespace
    selector of the spec. Egress stays open: PostgreSQL, Redis, NATS and S3 live
    wherever the platform points, often outside the cluster.
    """
    pods = {"matchLabels": {PLATFORM_LABEL: owner.name}}
    front_door = spec.networkPolicies.frontDoorNamespaceSelector
    namespaces: dict[str, Any] = {}
    if front_door.matchLabels:
        namespaces["matchLabels"] = dict(front_door.matchLabels)
    if front_door.matchExpressions:
        namespaces["matchExpressions"] = [
            {"key": e.key, "operator": e.operator, **({"values": list(e.values)} if e.values else {})}
            for e in front_door.matchExpressions]
    labels = {PLATFORM_LABEL: owner.name}
    deny = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": metadata(f"{owner.name}-default-deny", owner, labels),
            "spec": {"podSelector": pods, "policyTypes": ["Ingress"]}}
    allow = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": metadata(f"{owner.name}-allow-http", owner, labels),
             "spec": {"podSelector": pods, "policyTypes": ["Ingress"], "ingress": [{
                 "from": [{"namespaceSelector": namespaces}, {"podSelector": pods}],
                 "ports": [{"protocol": "TCP", "port": wiring.HTTP_PORT}]}]}}
    return [deny, allow]


def service_monitor(owner: Owner, spec: VezaPlatformSpec) -> dict[str, Any]:
    """Prometheus Operator scrape config for every worker Service of the platform."""
    labels = {PLATFORM_LABEL: owner.name}
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": metadata(f"{owner.name}-workers", owner, labels),
            "spec": {"selector": {"matchLabels": {PLATFORM_LABEL: owner.name, "app.kubernetes.io/name": "veza"}},
                     "endpoints": [{"port": "http", "path": "/metrics", "interval": "30s"}]}}


def build_children(owner: Owner, spec: VezaPlatformSpec, *, service_monitors: bool = False,
                   http_routes: bool = False) -> list[dict[str, Any]]:
    """Everything a platform owns; `service_monitors` and `http_routes` when the cluster serves those APIs."""
    labels = {PLATFORM_LABEL: owner.name}
    api = api_workload(owner, spec, api_name(owner.name), API_COMPONENT, spec.api.replicas)
    migrate = api_workload(owner, spec, migration_job_name(owner.name, spec), "migrate", 1)
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(f"{owner.name}-config", owner, labels),
              "data": {"publicURL": wiring.public_url(spec), "issuer": wiring.public_url(spec),
                       "jwksURL": f"{wiring.public_url(spec)}/.well-known/jwks.json"}}
    children = [
        config,
        manifests.service_account(f"{owner.name}-api", owner, labels),
        manifests.service_account(platform_service_account(owner.name), owner, labels),
        manifests.job(migrate),
        manifests.deployment(api),
        manifests.service(api),
        *frontdoor.children(owner.name, owner, spec, [("/", api.name)], labels, http_routes=http_routes),
    ]
    if spec.api.replicas > 1:
        children.append(manifests.pod_disruption_budget(api))
    if spec.networkPolicies.enabled:
        children.extend(network_policies(owner, spec))
    if service_monitors and spec.observability.metrics.enabled and spec.observability.metrics.serviceMonitor:
        children.append(service_monitor(owner, spec))
    return children


def keys_secret(owner: Owner, name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": metadata(name, owner, {PLATFORM_LABEL: owner.name}),
            "stringData": jwt_keys.secret_data([jwt_keys.generate_signing_key()])}


# Existence of referenced Secrets, remembered briefly so that bursts of reconciles
# (a thousand rooms created at once) do not turn into a thousand GETs.
_SECRET_TTL = 30.0
_secrets_seen: dict[tuple[str, str], float] = {}


async def _missing_secrets(ctx: Context, namespace: str, names: set[str]) -> list[str]:
    missing = []
    for name in sorted(names):
        seen = _secrets_seen.get((namespace, name))
        if seen is not None and time.monotonic() - seen < _SECRET_TTL:
            continue
        if await ctx.client.get("Secret", namespace, name) is None:
            _secrets_seen.pop((namespace, name), None)
            missing.append(name)
        else:
            _secrets_seen[(namespace, name)] = time.monotonic()
    return missing


async def reconcile_platform(ctx: Context, key: Key) -> None:
    body = ctx.store.owners.get(key)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    _, namespace, name = key
    generation = body["metadata"].get("generation", 0)
    previous = body.get("status") or {}
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "rooms": len(ctx.store.referencing("ChatRoom", namespace, name)),
        "channels": len(ctx.store.referencing("StreamChannel", namespace, name)),
    }

    async def report(health: Health) -> None:
        before = ready_reason(previous.get("conditions"))
        status["conditions"] = conditions(health, generation, previous.get("conditions"))
        if await ctx.report(key, status) and before != ("True" if health.ready else "False", health.reason):
            await post_event(ctx, body, health.event_type, health.reason, health.message)

    try:
        spec = VezaPlatformSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        await report(Health(False, "InvalidSpec", describe_error(exc), degraded=True))
        return
    owner = Owner.of(body)
    status["url"] = wiring.public_url(spec)

    secret_name = wiring.keys_secret_name(name, spec)
    status["keysSecret"] = secret_name
    if spec.auth.keysSecretName is None and previous.get("keysSecret") != secret_name:
        # First reconcile (or the name changed): generate the keys unless they exist. Never overwritten.
        await ctx.client.create(keys_secret(owner, secret_name))
    missing = await _missing_secrets(ctx, namespace, wiring.secrets_referenced(spec) | {secret_name})

    monitors = await ctx.capability("monitoring.coreos.com/v1", "servicemonitors")
    routes = await frontdoor.serves_routes(ctx, spec)
    await ctx.sync_children(key, build_children(owner, spec, service_monitors=monitors, http_routes=routes))

    if missing:
        ctx.requeue(key, 10.0)  # heal by itself once the Secrets appear
        await report(Health(False, "SecretNotFound", f"Secret(s) not found: {', '.join(missing)}.",
                            degraded=True))
        return
    job = ctx.store.children.get(("Job", namespace, migration_job_name(name, spec)))
    job_status = (job or {}).get("status") or {}
    if job_status.get("succeeded"):
        status["migratedVersion"] = spec.image.tag
    elif job_status.get("failed", 0) >= 6:
        await report(Health(False, "MigrationFailed", "The database migration Job failed; see its logs.",
                            degraded=True))
        return
    health = workers_health(ctx.store.children.get(("Deployment", namespace, api_name(name))), spec.api.replicas,
                            "api")
    if health.ready and not job_status.get("succeeded"):
        health = Health(False, "Migrating", "Waiting for the database migration Job.", progressing=True)
    door = frontdoor.health(ctx, key, spec, name, routes)
    if door is not None and not health.degraded:
        health = door
    await report(health)
