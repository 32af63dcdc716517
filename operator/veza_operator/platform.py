"""VezaPlatform: the API Deployment, the Ingress or HTTPRoute, the JWT keys, migrations, and policies.

Upgrades migrate first: a new `spec.image` gets its migration Job at once, while every worker
(the API, each room and channel) stays on `status.workerImage`, the newest image whose migration
Job succeeded. When the Job succeeds the platform records the new image there and the workers roll
to it (rooms and channels read it from the platform's status). A failed Job leaves them where they
are. On first install nothing is migrated yet and the workers start with the spec's image at once.

The JWT key Secret is created once when absent and never regenerated; `keys.py` rolls its
keys in stages, on the schedule of spec.auth.keyRotation or on demand (docs/operator.md,
"Signing-key rotation"). Rooms and channels get their own Ingress (and HTTPRoute) objects on the same
host (Ingress controllers and Gateways merge them), so adding a room never rewrites a
shared object; a pooled room's route leads to its chat pool shard's Service.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError

from veza_core import keys as jwt_keys

from . import admission, autoscaling, cnpg, directory, frontdoor, manifests, placement, wiring
from . import keys as key_schedule
from .conditions import Health, conditions, ready_reason, workers_health
from .controller import Context, Key, post_event
from .models import Image, VezaPlatformSpec, describe_error
from .naming import (
    COMPONENT_LABEL,
    PLATFORM_LABEL,
    POOL_SHARD_LABEL,
    Owner,
    metadata,
    pool_name,
    pool_selector,
    selector_labels,
)
from .workers import platform_service_account, url_port, worker_image

API_COMPONENT = "api"


def api_name(platform: str) -> str:
    return f"{platform}-api"


def migration_job_name(platform: str, spec: VezaPlatformSpec) -> str:
    """One Job per worker version: a new image runs its migrations once."""
    version = hashlib.sha256(spec.image.reference.encode()).hexdigest()[:8]
    return f"{platform}-migrate-{version}"


MIGRATION_BACKOFF_LIMIT = 6
Migration = Literal["Succeeded", "Failed", "Running"]


def migration_state(job: dict[str, Any] | None) -> Migration:
    """What the migration Job of the spec's image says (Running also while it does not exist yet)."""
    status = (job or {}).get("status") or {}
    if status.get("succeeded"):
        return "Succeeded"
    failed = any(c.get("type") == "Failed" and c.get("status") == "True" for c in status.get("conditions") or [])
    if failed or status.get("failed", 0) >= MIGRATION_BACKOFF_LIMIT:
        return "Failed"
    return "Running"


@dataclass(frozen=True)
class Images:
    """Which image the platform migrates and which its workers run."""

    target: str  # the spec's image, repository:tag: its migration Job runs now
    workers: Image  # what the API, rooms and channels run
    recorded: str | None  # status.workerImage: the newest image whose migration Job succeeded
    migration: Migration

    @property
    def waiting(self) -> bool:
        """Workers stay on an older, migrated image until the target's migrations have run."""
        return self.workers.reference != self.target


def choose_images(spec: VezaPlatformSpec, previous_status: dict[str, Any] | None, job: dict[str, Any] | None
                  ) -> Images:
    """Workers run the newest image whose migration Job succeeded; before any did (first install), the spec's."""
    migration = migration_state(job)
    recorded = (previous_status or {}).get("workerImage") or None
    if migration == "Succeeded":
        recorded = spec.image.reference
    return Images(target=spec.image.reference, workers=worker_image(spec, {"workerImage": recorded}),
                  recorded=recorded, migration=migration)


def api_workload(owner: Owner, spec: VezaPlatformSpec, name: str, component: str, replicas: int,
                 image: Image | None = None) -> manifests.Workload:
    """The API server (component "api") or the migration Job (component "migrate") of a platform.

    The migration Job always runs the spec's image; the API runs `image` (the worker image) when given.
    """
    # The migration Job connects as the schema owner; the API as its own role when it has one.
    env = wiring.worker_env(owner.name, owner.namespace, spec, API_COMPONENT, schema_owner=component == "migrate")
    if component == API_COMPONENT:  # the operator's credential for the directory endpoints (directory.py)
        env["VEZA_DIRECTORY_TOKEN"] = wiring.SecretValue(directory.secret_name(owner.name), directory.TOKEN_KEY)
    return manifests.Workload(
        owner=owner, name=name, component=component, args=[component], image=image or spec.image,
        replicas=replicas,
        resources=spec.api.resources,
        env=env,
        selector=selector_labels(owner.name, component, owner.name),
        service_account=f"{owner.name}-api", keys_secret=wiring.keys_secret_name(owner.name, spec),
        keys_items=(jwt_keys.PUBLIC_KEYS_FILE, jwt_keys.SIGNING_KEYS_FILE),
        metrics=spec.observability.metrics.enabled,
    )


def chat_pool_workload(owner: Owner, spec: VezaPlatformSpec, replicas: int | None, image: Image | None = None,
                       shard: int = 0) -> manifests.Workload:
    """A chat pool shard: generic chat workers (`veza chat --pool`) serving the pooled rooms routed to it.

    Wired like a room's workers, without a room: each pooled room's worker spec comes from the directory. Every
    shard could serve every pooled room; the rooms' routes decide which one does.
    """
    shards = spec.chat.pool.shards
    return manifests.Workload(
        owner=owner, name=pool_name(owner.name, shard, shards), component="chat", args=["chat", "--pool"],
        image=image or spec.image, replicas=replicas,
        resources=spec.chat.pool.resources or spec.defaults.chat.resources,
        env=wiring.worker_env(owner.name, owner.namespace, spec, "chat"),
        selector=pool_selector(owner.name, shard, shards), service_account=platform_service_account(owner.name),
        keys_secret=wiring.keys_secret_name(owner.name, spec), metrics=spec.observability.metrics.enabled,
        extra_labels={POOL_SHARD_LABEL: str(shard)},
    )


def chat_pool_children(owner: Owner, spec: VezaPlatformSpec, replicas: list[int], *, image: Image | None = None,
                       scaled_objects: bool = False) -> list[dict[str, Any]]:
    """Each pool shard's Deployment and Service, and its PDB past one replica (`replicas`: one per shard).

    With `scaled_objects` (autoscaling provider KEDA, served) each shard has a ScaledObject instead, which owns its
    replicas: the Deployment leaves them out. No route: every room has its own `/chat/<room>` route, which leads to
    its shard's Service while it is pooled.
    """
    children = []
    for shard, count in enumerate(replicas):
        pool = chat_pool_workload(owner, spec, None if scaled_objects else count, image, shard)
        children += [manifests.deployment(pool), manifests.service(pool)]
        if scaled_objects:
            children.append(autoscaling.pool_scaled_object(pool.name, owner, pool.labels, spec))
        if (spec.chat.pool.minReplicas if scaled_objects else count) > 1:
            children.append(manifests.pod_disruption_budget(pool))
    return children


def network_policies(owner: Owner, spec: VezaPlatformSpec) -> list[dict[str, Any]]:
    """Default-deny both ways for every pod of the platform, then what the workers need.

    In: HTTP from the front door (the spec's namespace selector), from each other, and from where Prometheus
    runs (another selector) while metrics are on. Out: DNS, the
    backing services where the spec says they are (PostgreSQL, Redis, NATS, S3 live wherever the
    platform points, often outside the cluster; a CloudNativePG cluster's pods always), each other's
    HTTP port (a stream follower forwards a live source to its leader), the OTLP collector, and for the
    API its OIDC provider. Never a cloud metadata address. Replies to the front door need no egress
    rule; a relay channel adds its own policy (`workers.relay_policy`).
    """
    pods = {"matchLabels": {PLATFORM_LABEL: owner.name}}
    labels = {PLATFORM_LABEL: owner.name}
    policy = spec.networkPolicies
    front_door = {"namespaceSelector": manifests.label_selector(policy.frontDoorNamespaceSelector)}
    dns = policy.egress.dns
    egress: list[dict[str, Any]] = [
        {"to": manifests.egress_peers(dns),
         "ports": [{"protocol": proto, "port": port} for port in dns.ports or [53] for proto in ("UDP", "TCP")]},
        *({"to": manifests.egress_peers(peers), **({"ports": manifests.tcp(*peers.ports)} if peers.ports else {})}
          for peers in policy.egress.backends),
        {"to": [{"podSelector": pods}], "ports": manifests.tcp(wiring.HTTP_PORT)},
    ]
    if spec.observability.otlpEndpoint:
        egress.append({"to": manifests.internet(), "ports": manifests.tcp(url_port(spec.observability.otlpEndpoint))})
    if (cluster := spec.connections.postgres.cluster) is not None:
        # The CloudNativePG instances, primary and replicas, in the platform's namespace: reachable however
        # narrowly egress.backends is drawn.
        egress.append({"to": [{"podSelector": {"matchLabels": {cnpg.CLUSTER_LABEL: cluster.name}}}],
                       "ports": manifests.tcp(cnpg.PORT)})
    out = [
        manifests.network_policy(f"{owner.name}-default-deny", owner, labels, pods, ingress=[], egress=[]),
        manifests.network_policy(f"{owner.name}-allow-http", owner, labels, pods, ingress=[{
            "from": [front_door, {"podSelector": pods}], "ports": manifests.tcp(wiring.HTTP_PORT)}]),
        manifests.network_policy(f"{owner.name}-allow-egress", owner, labels, pods, egress=egress),
    ]
    if spec.observability.metrics.enabled:  # Prometheus scrapes /metrics on the same port
        out.append(manifests.network_policy(f"{owner.name}-allow-metrics", owner, labels, pods, ingress=[{
            "from": [{"namespaceSelector": manifests.label_selector(policy.metricsNamespaceSelector)}],
            "ports": manifests.tcp(wiring.HTTP_PORT)}]))
    if spec.auth.oidc is not None:
        api_pods = {"matchLabels": {PLATFORM_LABEL: owner.name, COMPONENT_LABEL: API_COMPONENT}}
        out.append(manifests.network_policy(f"{owner.name}-api-oidc", owner, labels, api_pods, egress=[
            {"to": manifests.internet(), "ports": manifests.tcp(url_port(spec.auth.oidc.issuerURL))}]))
    return out


def service_monitor(owner: Owner, spec: VezaPlatformSpec) -> dict[str, Any]:
    """Prometheus Operator scrape config for every worker Service of the platform."""
    labels = {PLATFORM_LABEL: owner.name}
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": metadata(f"{owner.name}-workers", owner, labels),
            "spec": {"selector": {"matchLabels": {PLATFORM_LABEL: owner.name, "app.kubernetes.io/name": "veza"}},
                     "endpoints": [{"port": "http", "path": "/metrics", "interval": "30s"}]}}


def build_children(owner: Owner, spec: VezaPlatformSpec, *, worker_image: Image | None = None,
                   service_monitors: bool = False, http_routes: bool = False, pool_replicas: list[int] | None = None,
                   scaled_objects: bool = False) -> list[dict[str, Any]]:
    """Everything a platform owns; `service_monitors`, `http_routes` and `scaled_objects` (KEDA's, for the pool
    shards when the autoscaling provider is KEDA) when the cluster serves those APIs.

    The migration Job runs the spec's image, the API Deployment and the chat pool `worker_image`
    (`choose_images`; the spec's image when not given). `pool_replicas`: each pool shard's size
    (`placement.pool_replicas`; the minimum when not given).
    """
    labels = {PLATFORM_LABEL: owner.name}
    api = api_workload(owner, spec, api_name(owner.name), API_COMPONENT, spec.api.replicas, worker_image)
    migrate = api_workload(owner, spec, migration_job_name(owner.name, spec), "migrate", 1)
    children = [
        manifests.service_account(f"{owner.name}-api", owner, labels),
        manifests.service_account(platform_service_account(owner.name), owner, labels),
        manifests.job(migrate),
        manifests.deployment(api),
        manifests.service(api),
        *frontdoor.children(owner.name, owner, spec, [("/", api.name)], labels, http_routes=http_routes),
    ]
    if spec.api.replicas > 1:
        children.append(manifests.pod_disruption_budget(api))
    if spec.chat.pool.enabled:
        pool = spec.chat.pool
        children.extend(chat_pool_children(owner, spec, pool_replicas or [pool.minReplicas] * pool.shards,
                                           image=worker_image, scaled_objects=scaled_objects))
    if spec.networkPolicies.enabled:
        children.extend(network_policies(owner, spec))
    if service_monitors and spec.observability.metrics.enabled and spec.observability.metrics.serviceMonitor:
        children.append(service_monitor(owner, spec))
    return children


def keys_secret(owner: Owner, name: str, now: datetime) -> dict[str, Any]:
    """The platform's first key, signing from `now`, with its schedule (`keys.py` rolls it later)."""
    first = jwt_keys.generate_signing_key()
    schedule = key_schedule.Schedule((key_schedule.KeyTimes(first["kid"], now, now),))
    meta = metadata(name, owner, {PLATFORM_LABEL: owner.name}, {jwt_keys.SCHEDULE_ANNOTATION: schedule.to_json()})
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": meta,
            "stringData": jwt_keys.secret_data([first])}


def pooled_rooms(ctx: Context, namespace: str, platform: str) -> list[str]:
    """The platform's rooms the pool serves now (the directory lists them pooled)."""
    out = []
    for ref in ctx.store.referencing("ChatRoom", namespace, platform):
        body = ctx.store.owners[ref]
        wanted = (body.get("spec") or {}).get("placement", "Auto")
        state = placement.parse_state((body.get("status") or {}).get("placement"))
        if placement.declared(wanted, state) == "pooled":
            out.append(ref[2])
    return out


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
    images = choose_images(spec, previous, ctx.store.children.get(("Job", namespace, migration_job_name(name, spec))))
    refusal = admission.platform_refusal(spec, images.workers, ctx.settings)
    if refusal is not None:  # nothing rolls: the children stay as they are
        await report(refusal.health())
        return

    secret_name = wiring.keys_secret_name(name, spec)
    status["keysSecret"] = secret_name
    first = previous.get("keysSecret") != secret_name  # first reconcile, or the name changed
    # Or the keys went missing: a platform deleted and applied again at once finds its predecessor's keys, which
    # the garbage collector removes after this create was refused as a conflict.
    vanished = ready_reason(previous.get("conditions")) == ("False", "SecretNotFound")
    if spec.auth.keysSecretName is None and (first or vanished):
        # Generated unless they exist; never overwritten.
        await ctx.client.create(keys_secret(owner, secret_name, datetime.now(UTC).replace(microsecond=0)))

    if images.recorded is not None:
        status["workerImage"] = images.recorded  # its change rolls every room and channel (handlers.py)
    if images.migration == "Succeeded":
        status["migratedVersion"] = spec.image.tag

    # A CloudNativePG Cluster that is missing holds every change back (its Secret is not there either); one that
    # is not healthy (starting, failing over, upgrading) does not: the workers reconnect once it serves again.
    postgres = await cnpg.check_postgres(ctx, key, spec)
    if not postgres.found and postgres.health is not None:
        await report(postgres.health)
        return

    monitors = await ctx.capability("ServiceMonitor")
    routes = await frontdoor.serves_routes(ctx, spec)
    await directory.ensure_secret(ctx, owner)
    pooled = pooled_rooms(ctx, namespace, name)
    shards = spec.chat.pool.shards
    rooms_of: list[list[str]] = [[] for _ in range(shards)]
    for room in pooled:
        rooms_of[placement.pool_shard(room, shards)].append(room)
    replicas: list[int] = []
    if spec.chat.pool.enabled:  # each shard sized on its own rooms and their connections
        loads = ctx.loads.get(key) or {}
        replicas = [placement.pool_replicas(spec.chat.pool, len(rooms),
                                            sum(loads[room].connections for room in rooms if room in loads))
                    for rooms in rooms_of]
    scaled_objects = spec.autoscaling.provider == "KEDA" and await ctx.capability("ScaledObject")
    if scaled_objects and spec.chat.pool.enabled:
        await autoscaling.hand_over_replicas(ctx, namespace, [pool_name(name, i, shards) for i in range(shards)])
    children = build_children(owner, spec, worker_image=images.workers, service_monitors=monitors,
                              http_routes=routes, pool_replicas=replicas, scaled_objects=scaled_objects)
    from_operator = directory.api_ingress_policy(owner, ctx.settings) if spec.networkPolicies.enabled else None
    if from_operator is not None:
        children.append(from_operator)
    # Every Secret the children read, and those the rooms and channels will: nothing is applied until
    # each exists and is the platform's.
    names = admission.secrets_in(children) | wiring.secrets_referenced(spec)
    refused = await admission.apply_admitted(ctx, key, "VezaPlatform", children, names, name, owner.uid)
    if refused is not None:
        refused = cnpg.explain_refusal(spec, refused, postgres.health)
        await report(refused)
        return
    keys_status = await key_schedule.roll_keys(ctx, key, body, spec, secret_name, previous.get("keys"),
                                               spec_changed=previous.get("observedGeneration") != generation)
    if keys_status is not None:
        status["keys"] = keys_status

    stay = f" Workers stay on {images.workers.reference}." if images.waiting else ""
    if images.migration == "Failed":
        await report(Health(False, "MigrationFailed", f"The database migration Job of {images.target} failed; "
                                                      f"see its logs.{stay}", degraded=True))
        return
    health = workers_health(ctx.store.children.get(("Deployment", namespace, api_name(name))), spec.api.replicas,
                            "api")
    if images.migration == "Running":
        if images.waiting:
            # Users are served by the running, migrated version: Ready says how it does; Progressing says
            # that the next one is on its way.
            if not health.degraded:
                health = Health(health.ready, health.reason, health.message, progressing=health.progressing,
                                progress=("Migrating", f"Waiting for the database migration Job of "
                                                       f"{images.target}.{stay}"))
        elif images.recorded is None and health.ready:
            # First install: the workers run the spec's image, whose schema is not there yet. (An image
            # migrated before, whose Job runs again after a change back to it, holds nothing back.)
            health = Health(False, "Migrating", f"Waiting for the database migration Job of {images.target}.",
                            progressing=True)
    if spec.chat.pool.enabled:
        # The shards serve every pooled room: the platform is Ready when the API and every shard are.
        listed: list[dict[str, Any]] = []
        pool_health = Health(True, "Ready", "")
        before = {entry.get("name"): entry for entry in (previous.get("chatPool") or {}).get("shards") or []}
        flipped: set[int] = set()
        for shard, (rooms, wanted) in enumerate(zip(rooms_of, replicas, strict=True)):
            shard_name = pool_name(name, shard, shards)
            deployment = ctx.store.children.get(("Deployment", namespace, shard_name))
            observed = (deployment or {}).get("status") or {}
            entry = {"name": shard_name, "replicas": observed.get("replicas", 0),
                     "readyReplicas": observed.get("readyReplicas", 0), "rooms": len(rooms)}
            listed.append(entry)
            if bool(entry["readyReplicas"]) != bool((before.get(shard_name) or {}).get("readyReplicas")):
                flipped.add(shard)
            if scaled_objects:  # KEDA's HPA decides how many
                wanted = max(((deployment or {}).get("spec") or {}).get("replicas") or 0, spec.chat.pool.minReplicas)
            shard_health = workers_health(deployment, wanted, f"chat pool shard {shard_name}")
            if pool_health.ready and not shard_health.ready:
                pool_health = shard_health
        status["chatPool"] = {"replicas": sum(e["replicas"] for e in listed),
                              "readyReplicas": sum(e["readyReplicas"] for e in listed), "rooms": len(pooled),
                              "shards": listed}
        if flipped:
            # Whether its shard serves at all is each pooled room's Ready: the shard's events reach only us.
            for ref in ctx.store.referencing("ChatRoom", namespace, name):
                if placement.pool_shard(ref[2], shards) in flipped:
                    ctx.requeue(ref, 0.0)
        if not pool_health.ready and not health.degraded and (health.ready or pool_health.degraded):
            health = pool_health
    elif previous.get("chatPool") is not None:
        status["chatPool"] = None  # the pool is gone: so is its status (a merge patch's null removes it)
    if postgres.health is not None and not health.degraded:
        health = postgres.health
    door = frontdoor.health(ctx, key, spec, name, routes)
    if door is not None and not health.degraded:
        health = door
    if spec.chat.pool.enabled and not health.degraded and (
            problem := autoscaling.keda_served_problem(spec, scaled_objects)):
        ctx.requeue(key, ctx.capability_ttl)  # no watch event says when KEDA arrives
        health = Health(False, "AutoscalerNotInstalled", problem, degraded=True)
    await report(health)
