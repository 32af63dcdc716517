"""What ChatRoom and StreamChannel have in common: a scaled worker Deployment per resource.

`build_children` is pure (spec in, manifests out); `reconcile` is the thin part
that reads the store, applies the differences and reports status. The kind
modules (`chatroom.py`, `streamchannel.py`) describe what differs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from veza_core.specs import ChatRoomSpec, Resources, StreamChannelSpec

from . import admission, frontdoor, manifests, wiring
from .autoscaling import keda_served_problem, worker_autoscaler
from .conditions import Health, conditions, ready_reason, workers_health
from .controller import Context, Key, post_event
from .models import Image, VezaPlatformSpec, describe_error
from .naming import Owner, selector_labels, selector_string, worker_name

log = logging.getLogger("veza.operator")

WorkerSpec = ChatRoomSpec | StreamChannelSpec


@dataclass(frozen=True)
class Placed:
    """Where a resource's workers run this reconcile (rooms: `chatroom.place_room`)."""

    dedicated: bool  # its own Deployment and Service are wanted (its route always is)
    status: dict[str, Any]  # what its status says of it (placement, placementChangedAt)
    health: Health | None = None  # while another serves it (the chat pool): what Ready says; None: its workers'
    progress: tuple[str, str] | None = None  # a move under way: Progressing's reason and message
    # The Service its route leads to when not its own: its pool shard's while pooled or moving, so clients reach
    # it where it is served until its own workers are ready, and again from the moment they are going. A move
    # updates that one route's backend; it never deletes and creates a route.
    route_to: str | None = None


Place = Callable[[Context, Key, dict[str, Any], "WorkerSpec", VezaPlatformSpec], Awaitable[Placed]]


@dataclass(frozen=True)
class WorkerKind:
    kind: str  # ChatRoom | StreamChannel
    component: str  # chat | stream (also the `veza` subcommand)
    spec_model: type[ChatRoomSpec] | type[StreamChannelSpec]
    path_prefix: str  # URL prefix on the platform's host
    load_metric: str  # per-pod metric the HPA scales on
    place: Place | None = None  # None: always a Deployment of its own

    def resources(self, spec: WorkerSpec, platform: VezaPlatformSpec) -> Resources:
        defaults = platform.defaults.chat if self.component == "chat" else platform.defaults.stream
        return spec.resources or defaults.resources


def platform_service_account(platform: str) -> str:
    return f"{platform}-worker"


def worker_image(platform: VezaPlatformSpec, status: dict[str, Any] | None) -> Image:
    """The image every worker of a platform runs (API, rooms, channels, purge Jobs).

    `status.workerImage` is the newest image whose migration Job succeeded: after an image change
    the workers stay on it until the new image's migrations have run. Before any migration
    succeeded (first install) the workers run the spec's image at once.
    """
    recorded = (status or {}).get("workerImage")
    return platform.image.at(recorded) if isinstance(recorded, str) and recorded else platform.image


def url_port(url: str) -> int:
    """The TCP port a URL connects to (its scheme's default when it names none)."""
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme in ("https", "tls") else 80)


def relay_policy(owner: Owner, spec: StreamChannelSpec, selector: dict[str, str], labels: dict[str, str]
                 ) -> dict[str, Any]:
    """A relay channel's workers may reach the internet on the relay's port (and 80/443: a redirect may change
    the scheme), never a metadata address. Which hosts is the stream worker's check (`allowedHosts`): a
    NetworkPolicy knows no host names."""
    ports = manifests.tcp(url_port(spec.source.relay.url), 80, 443)
    return manifests.network_policy(f"{worker_name('stream', owner.name)}-relay", owner, labels,
                                    {"matchLabels": dict(selector)},
                                    egress=[{"to": manifests.internet(), "ports": ports}])


def build_children(wk: WorkerKind, owner: Owner, spec: WorkerSpec, raw_spec: dict[str, Any],
                   platform_name: str, platform: VezaPlatformSpec, *, image: Image | None = None,
                   http_routes: bool = False, relay_denied: tuple[str, ...] = (),
                   dedicated: bool = True, route_to: str | None = None,
                   scaled_objects: bool = False) -> list[dict[str, Any]]:
    """Deployment, Service, Ingress and HTTPRoute (as the platform asks), and when they apply a PDB and an
    autoscaler (an HPA, or a KEDA ScaledObject when the platform's provider is KEDA and `scaled_objects` are served).

    `image` is the platform's worker image (`worker_image`); the spec's image when not given. `relay_denied`: the
    operator's deny list for relays (its settings, never a resource's), given to stream workers. `route_to`: the
    Service the routes lead to instead of the resource's own (a room's pool shard); without `dedicated` the routes
    are all there is (a pooled room).
    """
    name = worker_name(wk.component, owner.name)
    selector = selector_labels(platform_name, wk.component, owner.name)
    env = wiring.worker_env(platform_name, owner.namespace, platform, wk.component, owner.name, raw_spec)
    if wk.component == "stream" and relay_denied:
        env["VEZA_STREAM_RELAY_DENIED_NETWORKS"] = ",".join(relay_denied)
    workload = manifests.Workload(
        owner=owner, name=name, component=wk.component, args=[wk.component], image=image or platform.image,
        replicas=spec.replicas, resources=wk.resources(spec, platform),
        env=env,
        selector=selector, service_account=platform_service_account(platform_name),
        keys_secret=wiring.keys_secret_name(platform_name, platform),
        metrics=platform.observability.metrics.enabled,
    )
    routes = frontdoor.children(name, owner, platform, [(f"{wk.path_prefix}/{owner.name}", route_to or name)],
                                workload.labels, http_routes=http_routes)
    if not dedicated:
        return routes
    children = [manifests.deployment(workload), manifests.service(workload), *routes]
    if (isinstance(spec, StreamChannelSpec) and spec.source.type == "relay"
            and platform.networkPolicies.enabled):
        children.append(relay_policy(owner, spec, selector, workload.labels))
    autoscaling = spec.autoscaling is not None and spec.autoscaling.enabled
    if spec.replicas > 1 or (autoscaling and spec.autoscaling is not None and spec.autoscaling.min_replicas > 1):
        children.append(manifests.pod_disruption_budget(workload))
    if autoscaling and spec.autoscaling is not None and (scaled_objects or platform.autoscaling.provider == "HPA"):
        children.append(worker_autoscaler(name, owner, workload.labels, platform,
                                          min_replicas=spec.autoscaling.min_replicas,
                                          max_replicas=spec.autoscaling.max_replicas, metric=wk.load_metric,
                                          target_per_pod=spec.autoscaling.target_per_replica))
    return children


def url(wk: WorkerKind, name: str, platform: VezaPlatformSpec) -> str:
    return f"{wiring.public_url(platform)}{wk.path_prefix}/{name}"


async def reconcile(wk: WorkerKind, ctx: Context, key: Key) -> None:
    body = ctx.store.owners.get(key)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return  # deleted or going: owner references take the children with it
    _, namespace, name = key
    generation = body["metadata"].get("generation", 0)
    raw_spec = body.get("spec") or {}
    status: dict[str, Any] = {"observedGeneration": generation}

    async def report(health: Health, **extra: Any) -> None:
        before = ready_reason((body.get("status") or {}).get("conditions"))
        status.update(extra)
        previous = (body.get("status") or {}).get("conditions")
        status["conditions"] = conditions(health, generation, previous)
        # Beside Ready, never folded into it: whether the platform's API lists the resource (directory.py).
        listed = ctx.directory.condition_for(key, generation, previous) if ctx.directory is not None else None
        if listed is not None:
            status["conditions"].append(listed)
        # An Event tells a change. A resource Ready at its first report (a pooled room, served at once) has none to
        # tell: its status says it, and 10,000 rooms created at once would otherwise add 10,000 Events.
        changed = before != ("True" if health.ready else "False", health.reason)
        if await ctx.report(key, status) and changed and (before is not None or not health.ready):
            await post_event(ctx, body, health.event_type, health.reason, health.message)

    try:
        spec: WorkerSpec = wk.spec_model.model_validate(raw_spec)
    except ValidationError as exc:
        await report(Health(False, "InvalidSpec", describe_error(exc), degraded=True))
        return
    platform_name = spec.platform_ref.name
    platform_body = ctx.store.owners.get(("VezaPlatform", namespace, platform_name))
    if platform_body is None:
        never_served = ready_reason((body.get("status") or {}).get("conditions")) in (
            None, ("False", "WaitingForPlatform"))
        if never_served and age(body) < PLATFORM_GRACE_SECONDS:
            # Applied together (`kubectl apply -f examples/`), a room may arrive just before its platform.
            await report(Health(False, "WaitingForPlatform", f"Waiting for VezaPlatform {platform_name!r}.",
                                progressing=True))
            ctx.requeue(key, 2.0)
            return
        await report(Health(False, "PlatformNotFound", f"VezaPlatform {platform_name!r} does not exist in "
                                                       f"namespace {namespace!r}.", degraded=True))
        return
    try:
        platform = VezaPlatformSpec.model_validate(platform_body.get("spec") or {})
    except ValidationError:
        await report(Health(False, "PlatformInvalid", f"VezaPlatform {platform_name!r} has an invalid spec.",
                            degraded=True))
        return
    problem = _spec_problem(wk, spec)
    if problem:
        await report(Health(False, "InvalidSpec", problem, degraded=True))
        return

    image = worker_image(platform, platform_body.get("status"))
    refusal = admission.platform_refusal(platform, image, ctx.settings)
    if refusal is not None:  # the platform reports it too; nothing rolls
        await report(refusal.health(f"VezaPlatform {platform_name!r}: "))
        return

    if ("ServiceAccount", namespace, platform_service_account(platform_name)) not in ctx.store.children:
        # Pods of a Deployment created before the platform's worker ServiceAccount fail to create.
        await report(Health(False, "WaitingForPlatform", f"Waiting for VezaPlatform {platform_name!r} to "
                                                         "create its worker ServiceAccount.", progressing=True))
        ctx.requeue(key, 2.0)
        return

    owner = Owner.of(body)
    routes = await frontdoor.serves_routes(ctx, platform)
    placed = await wk.place(ctx, key, body, spec, platform) if wk.place is not None else None
    scaled_objects = platform.autoscaling.provider == "KEDA" and await ctx.capability("ScaledObject")
    # A pooled room has its routes only: the rest of its dedicated days is pruned.
    children = build_children(
        wk, owner, spec, raw_spec, platform_name, platform, image=image, http_routes=routes,
        relay_denied=ctx.settings.relay_denied_networks, dedicated=placed is None or placed.dedicated,
        route_to=placed.route_to if placed is not None else None, scaled_objects=scaled_objects)
    refused = await admission.apply_admitted(ctx, key, wk.kind, children, admission.secrets_in(children),
                                             platform_name, platform_body["metadata"].get("uid", ""))
    if refused is not None:
        await report(refused, **(placed.status if placed is not None else {}))
        return

    selector = selector_string(selector_labels(platform_name, wk.component, name))
    door = frontdoor.health(ctx, key, platform, worker_name(wk.component, name), routes)
    if placed is not None and not placed.dedicated and placed.health is not None:
        health = door if door is not None and not placed.health.degraded else placed.health
        await report(health, replicas=0, readyReplicas=0, selector=selector, url=url(wk, name, platform),
                     **placed.status)
        return
    deployment = ctx.store.children.get(("Deployment", namespace, worker_name(wk.component, name)))
    health = workers_health(deployment, spec.replicas, f"{wk.component} worker")
    if door is not None and not health.degraded:
        health = door
    autoscaled = spec.autoscaling is not None and spec.autoscaling.enabled
    if autoscaled and not health.degraded and (problem := keda_served_problem(platform, scaled_objects)):
        ctx.requeue(key, ctx.capability_ttl)  # no watch event says when KEDA arrives
        health = Health(False, "AutoscalerNotInstalled", problem, degraded=True)
    if placed is not None and not health.degraded:
        if placed.health is not None:  # still served elsewhere (a promotion under way)
            health = placed.health
        if placed.progress is not None:
            health = Health(health.ready, health.reason, health.message, progressing=health.progressing,
                            progress=placed.progress)
    dstatus = (deployment or {}).get("status") or {}
    await report(health, replicas=dstatus.get("replicas", 0), readyReplicas=dstatus.get("readyReplicas", 0),
                 selector=selector, url=url(wk, name, platform), **(placed.status if placed is not None else {}))


# How long a new room or channel waits for its platform before reporting it missing (a Warning).
PLATFORM_GRACE_SECONDS = 30.0


def age(body: dict[str, Any]) -> float:
    """Seconds since the object was created (0 when unknown)."""
    created = body["metadata"].get("creationTimestamp")
    if not created:
        return 0.0
    return (datetime.now(UTC) - datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds()


def _spec_problem(wk: WorkerKind, spec: WorkerSpec) -> str | None:
    """Checks the schema cannot express (they need data outside the object)."""
    if isinstance(spec, StreamChannelSpec) and spec.source.relay.allowed_hosts:
        host = urlsplit(spec.source.relay.url).hostname or ""
        if host not in spec.source.relay.allowed_hosts:
            return f"relay host {host!r} is not in relay.allowedHosts"
    return None
