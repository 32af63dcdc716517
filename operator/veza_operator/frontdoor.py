"""How end clients reach the workers: an Ingress, and an HTTPRoute when the platform names a Gateway.

The platform, every room and every channel get their own objects on the platform's host
(platform.py says why none is shared). HTTPRoutes are created only while the cluster serves the
Gateway API, an optional API checked like the Prometheus Operator's: a platform naming a Gateway
on a cluster without it is reported (`GatewayAPINotInstalled`) instead of failing its reconciles.
The Gateway's controller writes its verdict into the route's status; a route it did not accept
makes the owner Degraded with the Gateway's own message. The Gateway itself is never read.
"""

from __future__ import annotations

from typing import Any

from . import manifests
from .conditions import Health
from .controller import Context, Key
from .models import GatewayRef, VezaPlatformSpec
from .naming import Owner

GATEWAY_API = f"{manifests.GATEWAY_GROUP}/v1"


def parent_ref(gateway: GatewayRef, namespace: str) -> dict[str, Any]:
    """The route's parentRef; the namespace is spelled out so the route reads the same everywhere."""
    ref = {"group": manifests.GATEWAY_GROUP, "kind": "Gateway", "name": gateway.name,
           "namespace": gateway.namespace or namespace}
    if gateway.sectionName:
        ref["sectionName"] = gateway.sectionName
    return ref


def children(name: str, owner: Owner, platform: VezaPlatformSpec, paths: list[tuple[str, str]],
             labels: dict[str, str], *, http_routes: bool) -> list[dict[str, Any]]:
    """The Ingress (unless disabled) and, with `http_routes` and a Gateway named, the HTTPRoute."""
    ingress = platform.ingress
    out = []
    if ingress.enabled:
        out.append(manifests.ingress(name, owner, host=ingress.host, paths=paths, class_name=ingress.className,
                                     tls_secret=ingress.tls.secretName if ingress.tls else None,
                                     annotations=ingress.annotations, labels=labels))
    if http_routes and platform.gateway is not None:
        out.append(manifests.http_route(name, owner, host=ingress.host, paths=paths,
                                        parent=parent_ref(platform.gateway, owner.namespace), labels=labels))
    return out


async def serves_routes(ctx: Context, platform: VezaPlatformSpec) -> bool:
    """Whether to create HTTPRoutes: a Gateway is named and the API is served (only then asked)."""
    return platform.gateway is not None and await ctx.capability("HTTPRoute")


def route_health(route: dict[str, Any] | None, parent: dict[str, Any]) -> Health | None:
    """The Gateway controller's verdict on `route` when it is a problem; None while it is fine or unknown.

    Conditions computed for an older generation of the route are not held against the current one.
    """
    if route is None:
        return None
    meta = route["metadata"]
    generation = meta.get("generation", 0)
    found: dict[str, dict[str, Any]] = {}
    for entry in (route.get("status") or {}).get("parents") or []:
        if not _same_parent(entry.get("parentRef") or {}, parent, meta.get("namespace", "")):
            continue
        for cond in entry.get("conditions") or []:
            if cond.get("status") == "False" and cond.get("observedGeneration", generation) >= generation:
                found.setdefault(cond.get("type", ""), cond)
    gateway = f"{parent['namespace']}/{parent['name']}"
    if (cond := found.get("Accepted")) is not None:
        return Health(False, "RouteNotAccepted", f"Gateway {gateway} did not accept HTTPRoute {meta['name']}: "
                                                 f"{cond.get('reason', '')}: {cond.get('message', '')}", degraded=True)
    if (cond := found.get("ResolvedRefs")) is not None:
        return Health(False, "RouteRefsNotResolved", f"Gateway {gateway} cannot resolve the backends of HTTPRoute "
                                                     f"{meta['name']}: {cond.get('reason', '')}: "
                                                     f"{cond.get('message', '')}", degraded=True)
    return None


def _same_parent(ref: dict[str, Any], parent: dict[str, Any], route_namespace: str) -> bool:
    return (ref.get("group", manifests.GATEWAY_GROUP) == manifests.GATEWAY_GROUP
            and ref.get("kind", "Gateway") == "Gateway" and ref.get("name") == parent["name"]
            and (ref.get("namespace") or route_namespace) == parent["namespace"]
            and ref.get("sectionName") == parent.get("sectionName"))


def health(ctx: Context, key: Key, platform: VezaPlatformSpec, route_name: str, served: bool) -> Health | None:
    """What the Gateway side adds to the owner's status: a missing API or a route the Gateway refused."""
    if platform.gateway is None:
        return None
    if not served:
        # No watch event will say when the API arrives: look again once the capability may have changed.
        ctx.requeue(key, ctx.capability_ttl)
        return Health(False, "GatewayAPINotInstalled",
                      f"spec.gateway names Gateway {platform.gateway.name}, but the cluster does not serve "
                      f"{GATEWAY_API} HTTPRoutes; install the Gateway API CRDs (standard channel). "
                      "No HTTPRoute was created.", degraded=True)
    route = ctx.store.children.get(("HTTPRoute", key[1], route_name))
    return route_health(route, parent_ref(platform.gateway, key[1]))
