"""Autoscaling: which object scales each worker Deployment, and on what.

`VezaPlatform.spec.autoscaling.provider` chooses the mechanism, for every room and channel with
`autoscaling.enabled` and for the chat pool:

- `HPA` (default): an HPA per room or channel on the custom resource's scale subresource, reading a Pods metric
  (`veza_chat_connections`, `veza_stream_listeners`) through a custom-metrics adapter the cluster runs. The
  operator sizes the pool shards itself (`placement.pool_replicas`: their rooms and connections).
- `KEDA`: a ScaledObject per room or channel, on the same scale subresource, and one per pool shard, on its
  Deployment; each with Prometheus triggers on what the workers export. KEDA makes the HPAs and feeds them.

One owner per `replicas` field, so nothing fights: a room's or channel's `.spec.replicas` belongs to whoever sets
it (`kubectl scale`, or the HPA once autoscaling is on) and the operator copies it to the Deployment; a pool
shard's Deployment `replicas` belongs to the operator under HPA and to KEDA's HPA under KEDA (the operator's
apply then leaves the field out). The autopilot (placement.py) moves rooms between the pool and workers of their
own; it never sets a replica count.
"""

from __future__ import annotations

from typing import Any

from . import manifests
from .controller import Context
from .models import VezaPlatformSpec
from .naming import Owner

# Holds a pool shard's replicas for a moment while KEDA takes them over (`hand_over_replicas`).
HANDOVER_MANAGER = "veza-operator-handover"


def pods_of(deployment: str) -> str:
    """A PromQL regex matching exactly the pods of `deployment` (`<deployment>-<template hash>-<suffix>`):
    room `a` never counts the pods of room `a-b` (PromQL anchors regexes)."""
    return f"{deployment}-[a-z0-9]+-[a-z0-9]+"


def load_query(metric: str, namespace: str, deployment: str) -> str:
    """The sum of a per-pod metric over one Deployment's pods, by the labels every pod scrape carries."""
    return f'sum({metric}{{namespace="{namespace}",pod=~"{pods_of(deployment)}"}})'


def keda_served_problem(platform: VezaPlatformSpec, served: bool) -> str | None:
    """Why ScaledObjects cannot be made, or None."""
    if platform.autoscaling.provider == "KEDA" and not served:
        return ("spec.autoscaling.provider is KEDA, but the cluster does not serve keda.sh/v1alpha1 ScaledObjects; "
                "install KEDA. Nothing scales these workers until then.")
    return None


def worker_autoscaler(name: str, owner: Owner, labels: dict[str, str], platform: VezaPlatformSpec, *,
                      min_replicas: int, max_replicas: int, metric: str, target_per_pod: int) -> dict[str, Any]:
    """What scales a room's or channel's own workers (`name`: their Deployment), through its scale subresource."""
    scaling = platform.autoscaling
    if scaling.provider == "HPA" or scaling.keda is None:
        return manifests.autoscaler(name, owner, labels, min_replicas=min_replicas, max_replicas=max_replicas,
                                    metric=metric, target_per_pod=target_per_pod,
                                    scale_down_seconds=scaling.scaleDownStabilizationSeconds)
    target = {"apiVersion": owner.reference()["apiVersion"], "kind": owner.kind, "name": owner.name}
    trigger = manifests.prometheus_trigger(metric.removeprefix("veza_").replace("_", "-"),
                                           scaling.keda.prometheusAddress,
                                           load_query(metric, owner.namespace, name), target_per_pod)
    return manifests.scaled_object(name, owner, labels, target=target, min_replicas=min_replicas,
                                   max_replicas=max_replicas, triggers=[trigger],
                                   polling_seconds=scaling.keda.pollingIntervalSeconds,
                                   scale_down_seconds=scaling.scaleDownStabilizationSeconds)


def pool_scaled_object(shard: str, owner: Owner, labels: dict[str, str], platform: VezaPlatformSpec
                       ) -> dict[str, Any]:
    """A pool shard's ScaledObject (provider KEDA): workers for the connections its pods hold and for the rooms
    they have open, whichever asks for more, within the pool's bounds."""
    pool, keda = platform.chat.pool, platform.autoscaling.keda
    assert keda is not None, "provider KEDA without keda (the model refuses it)"
    triggers = [
        manifests.prometheus_trigger("connections", keda.prometheusAddress,
                                     load_query("veza_chat_connections", owner.namespace, shard),
                                     pool.targetConnectionsPerWorker),
        manifests.prometheus_trigger("rooms", keda.prometheusAddress,
                                     load_query("veza_chat_rooms", owner.namespace, shard), pool.targetRoomsPerWorker),
    ]
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": shard}
    return manifests.scaled_object(shard, owner, labels, target=target, min_replicas=pool.minReplicas,
                                   max_replicas=pool.maxReplicas, triggers=triggers,
                                   polling_seconds=keda.pollingIntervalSeconds,
                                   scale_down_seconds=platform.autoscaling.scaleDownStabilizationSeconds)


async def hand_over_replicas(ctx: Context, namespace: str, shards: list[str]) -> None:
    """Before the operator's apply first leaves a pool shard's `replicas` out (provider KEDA), another field
    manager applies the current value: the field, no longer the operator's alone, is not reset to 1 (server-side
    apply removes a field its only owner stops applying) and the shard keeps its workers until KEDA's HPA sets
    them. Once per shard: when its ScaledObject does not exist yet."""
    for shard in shards:
        deployment = ctx.store.children.get(("Deployment", namespace, shard))
        if deployment is None or ("ScaledObject", namespace, shard) in ctx.store.children:
            continue
        replicas = (deployment.get("spec") or {}).get("replicas")
        if replicas is not None:
            await ctx.client.apply({"apiVersion": "apps/v1", "kind": "Deployment",
                                    "metadata": {"name": shard, "namespace": namespace},
                                    "spec": {"replicas": replicas}}, manager=HANDOVER_MANAGER)
