"""ChatRoom: served by a shard of the platform's chat pool, or by a chat worker Deployment of its own
(placement.py says which and when it moves); either way routed at /chat/<room> on the platform's host by
a route of its own, whose backend is the one thing a move changes.

Autoscaling scales on `veza_chat_connections` (the connections each pod holds),
through an HPA that targets the ChatRoom's scale subresource.

`deletionPolicy: Delete` purges the room's history when the room is deleted: a
finalizer holds the ChatRoom until a Job (`veza chat --purge`, wired like the
room's workers) has deleted its messages. The Job belongs to the platform, so it
outlives the room; with `Retain` (the default) nothing is held and history stays.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from veza_core.specs import ChatRoomSpec

from . import admission, manifests, placement, wiring
from .conditions import Health, workers_health
from .controller import Context, Key, post_event
from .models import VezaPlatformSpec
from .naming import OWNER_KIND, OWNER_NAME, Owner, pool_name, selector_labels, worker_name
from .workers import Placed, WorkerKind, WorkerSpec, platform_service_account, reconcile, worker_image

PURGE_FINALIZER = "veza.io/purge-history"


def parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def pool_health(ctx: Context, namespace: str, platform_name: str, platform: VezaPlatformSpec, shard: str
                ) -> Health:
    """What Ready says of a room its pool shard serves (no counts: a shard scaling rewrites no room's status)."""
    if not platform.chat.pool.enabled:
        return Health(False, "PoolDisabled", f"The room is pooled but VezaPlatform {platform_name!r} runs no chat "
                                             "pool (spec.chat.pool.enabled): nothing serves it.", degraded=True)
    pool = ctx.store.children.get(("Deployment", namespace, shard))
    if not ((pool or {}).get("status") or {}).get("readyReplicas"):
        return Health(False, "WaitingForPool", f"Waiting for a ready worker of the chat pool shard {shard}.",
                      progressing=True)
    return Health(True, "Pooled", f"Served by the chat pool shard {shard}.")


async def place_room(ctx: Context, key: Key, body: dict[str, Any], spec: WorkerSpec, platform: VezaPlatformSpec
                     ) -> Placed:
    """One step of the room's placement (placement.py): where it should be, and how far its move has come."""
    assert isinstance(spec, ChatRoomSpec)
    _, namespace, name = key
    platform_name = spec.platform_ref.name
    previous = body.get("status") or {}
    current = placement.parse_state(previous.get("placement"))
    changed_at = previous.get("placementChangedAt")
    now = datetime.now(UTC).replace(microsecond=0)
    loads = ctx.loads.get(("VezaPlatform", namespace, platform_name))
    load = None if loads is None else loads.get(name, placement.RoomLoad())
    autopilot = platform.chat.autopilot
    since = parse_time(changed_at)
    target = placement.desired_placement(spec.placement, current, load, since, now, autopilot,
                                         pool_enabled=platform.chat.pool.enabled)
    deployment = ctx.store.children.get(("Deployment", namespace, worker_name("chat", name)))
    ready = deployment is not None and workers_health(deployment, spec.replicas, "chat worker").ready
    declared = ctx.directory.declared_placement(key) if ctx.directory is not None else None
    settle = placement.FRONT_DOOR_SETTLE_SECONDS - (now - since).total_seconds() if since is not None else 0.0
    state = placement.next_state(current, target, dedicated_ready=ready, declared_pooled=declared == "pooled",
                                 has_dedicated=deployment is not None, route_settled=settle <= 0)
    if state == current == "Demoting" and settle > 0:
        ctx.requeue(key, settle)  # no watch event marks the end of the front door's settle time
    if state != current:
        changed_at = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        ctx.requeue(("VezaPlatform", namespace, platform_name), 1.0)  # the pool's room count
        why = (f"load {load.describe()}" if spec.placement == "Auto" and load is not None
               else f"spec.placement is {spec.placement}")
        if (current, state) == ("Promoting", "Dedicated"):
            await post_event(ctx, body, "Normal", "Promoted", f"The room moved to workers of its own ({why}; "
                             f"promotion at {autopilot.promoteConnections} connections or "
                             f"{autopilot.promoteMessagesPerSecond} messages/s).")
        elif (current, state) == ("Demoting", "Pooled"):
            await post_event(ctx, body, "Normal", "Demoted", f"The room moved to the chat pool ({why}; demotion "
                             f"below {autopilot.demoteBelowFraction:g} of the promotion thresholds).")
    shards = platform.chat.pool.shards
    shard = placement.pool_shard(name, shards)
    shard_service = pool_name(platform_name, shard, shards)
    # The shard its route leads to (while Pooled, Promoting and Demoting); none while Dedicated.
    status: dict[str, Any] = {"placement": state, "placementChangedAt": changed_at,
                              "poolShard": None if placement.routed_to_own(state) else shard}
    if state == "Pooled":
        return Placed(dedicated=False, status=status, route_to=shard_service,
                      health=pool_health(ctx, namespace, platform_name, platform, shard_service))
    if state == "Promoting":
        served = pool_health(ctx, namespace, platform_name, platform, shard_service)
        return Placed(dedicated=True, status=status, health=served if served.ready else None,
                      route_to=shard_service,
                      progress=("Promoting", "Starting the room's own workers; its chat pool shard serves it "
                                             "until they are ready."))
    if state == "Demoting":
        return Placed(dedicated=True, status=status, route_to=shard_service,
                      progress=("Demoting", "Waiting for the platform's API to list the room as pooled and for "
                                            "the front door to take its route back; its own workers serve it "
                                            "until then."))
    return Placed(dedicated=True, status=status)


CHAT_WORKERS = WorkerKind(kind="ChatRoom", component="chat", spec_model=ChatRoomSpec, path_prefix="/chat",
                          load_metric="veza_chat_connections", place=place_room)


def purge_job_name(room: str, uid: str) -> str:
    return f"purge-{room}-{uid[:6]}"


def purge_job(room_body: dict[str, Any], platform_body: dict[str, Any], platform: VezaPlatformSpec
              ) -> dict[str, Any]:
    """The Job deleting a room's history, owned by the platform and labelled for the room.

    It runs the platform's worker image (the migrated one), like the room's workers.
    """
    room = Owner.of(room_body)
    owner = Owner.of(platform_body)
    workload = manifests.Workload(
        owner=owner, name=purge_job_name(room.name, room.uid), component="chat-purge", args=["chat", "--purge"],
        image=worker_image(platform, platform_body.get("status")), replicas=1,
        resources=platform.defaults.chat.resources,
        env=wiring.worker_env(owner.name, owner.namespace, platform, "chat", room.name, room_body.get("spec")),
        selector=selector_labels(owner.name, "chat-purge", room.name),
        service_account=platform_service_account(owner.name), keys_secret=wiring.keys_secret_name(owner.name, platform),
    )
    job = manifests.job(workload)
    # Labelled for the room (its events bring the room's reconcile back), owned by the platform.
    job["metadata"]["labels"].update({OWNER_KIND: room.kind, OWNER_NAME: room.name})
    job["spec"]["ttlSecondsAfterFinished"] = 600
    return job


async def _set_finalizer(ctx: Context, body: dict[str, Any], present: bool) -> None:
    finalizers = [f for f in body["metadata"].get("finalizers") or [] if f != PURGE_FINALIZER]
    if present:
        finalizers.append(PURGE_FINALIZER)
    await ctx.client.patch_metadata("ChatRoom", body["metadata"]["namespace"], body["metadata"]["name"],
                                    {"finalizers": finalizers,
                                     "resourceVersion": body["metadata"]["resourceVersion"]})


async def _purge(ctx: Context, key: Key, body: dict[str, Any]) -> None:
    """The room is being deleted and holds our finalizer: purge, then let it go."""
    namespace = key[1]
    platform_name = ((body.get("spec") or {}).get("platformRef") or {}).get("name", "")
    platform_body = ctx.store.owners.get(("VezaPlatform", namespace, platform_name))
    try:
        platform = VezaPlatformSpec.model_validate((platform_body or {}).get("spec") or {})
    except ValidationError:
        platform_body = None
    if platform_body is None:
        # Nothing can reach the database without the platform: do not hold the room forever.
        await post_event(ctx, body, "Warning", "HistoryNotPurged",
                         f"VezaPlatform {platform_name!r} is gone; the room's history was not purged.")
        await _set_finalizer(ctx, body, False)
        return
    refusal = admission.platform_refusal(platform, worker_image(platform, platform_body.get("status")),
                                         ctx.settings)
    if refusal is not None:  # no Job of a refused image: the room waits until the platform is fixed
        await post_event(ctx, body, "Warning", refusal.reason, f"History not purged yet: {refusal.message}")
        ctx.requeue(key, 30.0)
        return
    job = purge_job(body, platform_body, platform)
    observed = ctx.store.children.get(("Job", namespace, job["metadata"]["name"]))
    if observed is None:
        await ctx.sync_children(("VezaPlatform", namespace, platform_name), [job], prune=False)
        return
    if (observed.get("status") or {}).get("succeeded"):
        await post_event(ctx, body, "Normal", "HistoryPurged", "The room's messages were deleted.")
        await _set_finalizer(ctx, body, False)


async def reconcile_chat_room(ctx: Context, key: Key) -> None:
    body = ctx.store.owners.get(key)
    if body is None:
        return
    finalizers = body["metadata"].get("finalizers") or []
    if body["metadata"].get("deletionTimestamp"):
        if PURGE_FINALIZER in finalizers:
            await _purge(ctx, key, body)
        return
    wants = (body.get("spec") or {}).get("deletionPolicy") == "Delete"
    if wants != (PURGE_FINALIZER in finalizers):
        await _set_finalizer(ctx, body, wants)
        return  # the watch event of that change brings us back with the new resourceVersion
    await reconcile(CHAT_WORKERS, ctx, key)
