"""kopf registrations: configuration, watches, probes. Thin by design.

Every watch handler only records the object in the store and asks the
reconciler for the custom resource it concerns; the work happens in the kind
modules (`platform.py`, `chatroom.py`, `streamchannel.py`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import kopf

from . import cnpg, kinds
from .controller import Context, Key, Reconciler, Store
from .directory import DirectorySync
from .kube import KubeClient
from .naming import MANAGED_BY, OWNER_KIND, OWNER_NAME
from .peering import PauseFollower
from .settings import Settings

log = logging.getLogger("veza.operator")


class Runtime:
    """The operator's state, kept in kopf's memo.

    A replica is a standby (kopf's peering paused it), filling (it lists every kind it watches), or
    active. Reconciles run only when active: a reconcile on a half-filled store would take a
    platform or a child not listed yet for missing, and flap conditions, post Events and re-apply
    children on every restart and failover.
    """

    def __init__(self, client: KubeClient, settings: Settings, namespaces: tuple[str, ...] = ()) -> None:
        self.settings = settings
        self.namespaces = namespaces  # watched; none: the whole cluster
        self.store = Store(status_read=kinds.STATUS_READ)
        self.ctx = Context(client=client, store=self.store, kinds=kinds.API, prunable=kinds.PRUNABLE,
                           capability_ttl=settings.capability_ttl, settings=settings)
        self.reconciler = Reconciler(self.ctx, kinds.RECONCILERS, workers=settings.reconcile_workers)
        self.reconciler.pause()  # until the store is filled
        # Beside the reconciles: a room or channel whose directory outcome changes is reconciled (its condition).
        self.directory = self.ctx.directory = DirectorySync(self.ctx, settings, self.reconciler.request)
        self.resync_seconds = settings.resync_seconds
        # What of a platform its rooms and channels are built from: its uid (a re-created platform),
        # generation (the spec) and status.workerImage (the migrated image their workers run).
        self.platform_versions: dict[Key, tuple[str, int, str | None]] = {}
        self.resync_task: asyncio.Task[None] | None = None
        self.fill_task: asyncio.Task[None] | None = None
        self.paused = True  # kopf's peering made this replica a standby (see `peering.py`)
        self.pause_follower = PauseFollower(self.pause, self.resume)

    def pause(self) -> None:
        """Stand by: kopf stops the watches, so the store would only go stale; forget it all."""
        self.paused = True
        if self.fill_task is not None:
            self.fill_task.cancel()
            self.fill_task = None
        self.reconciler.pause()
        self.directory.pause()
        self.store.owners.clear()
        self.store.clear_children()
        self.platform_versions.clear()
        log.info("peering: standing by")

    def resume(self) -> None:
        """Take over: fill the store (kopf's events fill it too, from now on), then reconcile."""
        self.paused = False
        if self.fill_task is None:
            self.fill_task = asyncio.get_running_loop().create_task(self.fill_then_reconcile())
        log.info("peering: active")

    async def fill_then_reconcile(self) -> None:
        delay = 1.0
        while True:
            try:
                await self.fill_store()
                break
            except Exception as exc:  # the API server unreachable, a transient error: try again
                log.warning("could not list the cluster", extra={"error": repr(exc), "retry_in": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        self.reconciler.resume()
        self.directory.resume()
        for key in list(self.store.owners):
            self.reconciler.request(key)
            if key[0] == "VezaPlatform":
                self.directory.request(key)
        log.info("store filled", extra={"owners": len(self.store.owners), "children": len(self.store.children)})

    async def fill_store(self) -> None:
        """List every kind the operator watches, as kopf's watches see it."""
        client = self.ctx.client
        for namespace in self.namespaces or (None,):
            for owner in kinds.OWNERS:
                for body in await client.list(owner.kind, namespace):
                    key = self.store.put_owner(body)
                    if owner is kinds.PLATFORM:
                        self.platform_versions[key] = platform_version(self.store.owners[key])
            selector = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
            for child in kinds.CHILDREN:
                if child.watched and (not child.optional or await self.ctx.capability(child.kind)):
                    for body in await client.list(child.kind, namespace, selector):
                        self.store.put_child(body)
            for referenced in kinds.REFERENCED:
                if not referenced.optional or await self.ctx.capability(referenced.kind):
                    for body in await client.list(referenced.kind, namespace):
                        self.store.put_child(body)

    async def resync_forever(self) -> None:
        """Reconcile everything now and then: a safety net, and a no-op when all is in order."""
        while True:
            await asyncio.sleep(self.resync_seconds)
            for key in list(self.store.owners):
                self.reconciler.request(key)
                if key[0] == "VezaPlatform":
                    self.directory.request(key)  # in memory unless a relisting is due


def platform_version(body: dict[str, Any]) -> tuple[str, int, str | None]:
    meta = body.get("metadata") or {}
    return meta.get("uid", ""), meta.get("generation", 0), (body.get("status") or {}).get("workerImage")


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    ours: Settings = memo.get("settings") or Settings()  # `cli.run` puts them in the memo
    # Watches can stall silently (kopf's most reported problem): bound them on both ends.
    settings.watching.server_timeout = ours.watch_server_timeout
    settings.watching.client_timeout = settings.watching.server_timeout + 30
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    # Bounded concurrency of kopf's per-object workers. A worker waits `idle_timeout` for more events of its object
    # before it frees its slot; kopf's 5 s made 64 slots admit 12.8 new objects a second (10,000 rooms created at
    # once took 13 minutes to be seen, bench/operator_bench.py). Our handlers only record the event and queue a
    # reconcile, so a worker has nothing to wait for.
    settings.batching.worker_limit = 64
    settings.queueing.idle_timeout = 0.5
    # Peering: one active replica; a replica killed without notice is forgotten after `lifetime`.
    settings.peering.lifetime = ours.peering_lifetime
    settings.peering.priority = random.randint(1, 1_000_000)
    settings.peering.stealth = False
    # Nothing in kopf's own persistence is used (no change handlers), but keep its marks in our domain.
    settings.persistence.finalizer = "veza.io/finalizer"
    settings.posting.level = logging.INFO

    runtime = Runtime(KubeClient(settings, kinds.API), ours, tuple(memo.get("namespaces") or ()))
    runtime.pause_follower.attach()
    runtime.reconciler.start()
    if not settings.peering.mandatory or settings.peering.standalone:
        runtime.resume()
    else:
        # kopf starts a peering replica paused and announces only the resume, once it has seen
        # that no peer of higher priority is alive.
        log.info("peering: standing by")
    runtime.resync_task = asyncio.create_task(runtime.resync_forever())
    memo.runtime = runtime


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        runtime.pause_follower.detach()
        for task in (runtime.resync_task, runtime.fill_task):
            if task is not None:
                task.cancel()
        await runtime.reconciler.stop()
        await runtime.directory.close()
        await runtime.ctx.client.close()


@kopf.on.probe(id="reconcile_queue")
def queue_depth(memo: kopf.Memo, **_: Any) -> int:
    runtime: Runtime = memo.runtime
    return len(runtime.reconciler.pending)


def _owner_event(kind: str) -> Any:
    async def handler(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        runtime: Runtime = memo.runtime
        if runtime.paused:
            return  # an event that slipped through as kopf paused: resuming lists everything again
        raw = dict(body)
        key: Key = (kind, body.metadata.namespace or "", body.metadata.name or "")
        if type == "DELETED":
            runtime.store.owners.pop(key, None)
        else:
            runtime.store.put_owner(raw)
            runtime.reconciler.request(key)
        if kind == "VezaPlatform":
            runtime.directory.request(key)
            version = None if type == "DELETED" else platform_version(raw)
            if runtime.platform_versions.get(key) != version:
                # A spec change, a newly migrated worker image, a platform appearing, deleted or
                # re-created concerns every room and channel on it; the echo of a status patch does not.
                if version is None:
                    runtime.platform_versions.pop(key, None)
                else:
                    runtime.platform_versions[key] = version
                for other in ("ChatRoom", "StreamChannel"):
                    for ref in runtime.store.referencing(other, key[1], key[2]):
                        runtime.reconciler.request(ref)
        else:
            runtime.directory.request_namespace(key[1])  # in memory unless the room or channel changed
        if kind != "VezaPlatform" and type in (None, "ADDED", "DELETED"):
            platform = ((raw.get("spec") or {}).get("platformRef") or {}).get("name")
            if platform:  # the platform counts its rooms and channels
                runtime.reconciler.request(("VezaPlatform", key[1], platform))

    handler.__name__ = f"watch_{kind.lower()}"
    return handler


async def _child_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    if runtime.paused:
        return
    raw = dict(body)
    if type == "DELETED":
        runtime.store.remove_child((raw["kind"], body.metadata.namespace or "", body.metadata.name or ""))
    else:
        runtime.store.put_child(raw)
    labels = body.metadata.labels
    if labels.get(OWNER_KIND) and labels.get(OWNER_NAME):
        runtime.reconciler.request((labels[OWNER_KIND], body.metadata.namespace or "", labels[OWNER_NAME]))


async def _referenced_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A CloudNativePG Cluster changed: the platforms whose PostgreSQL it is report its health."""
    runtime: Runtime = memo.runtime
    if runtime.paused:
        return
    raw = dict(body)
    namespace, name = body.metadata.namespace or "", body.metadata.name or ""
    if type == "DELETED":
        runtime.store.remove_child((raw["kind"], namespace, name))
    else:
        runtime.store.put_child(raw)
    for key in cnpg.platforms_naming(runtime.store.owners, namespace, name):
        runtime.reconciler.request(key)


def register() -> None:
    for owner in kinds.OWNERS:
        api = owner.api
        kopf.on.event(api.group, api.version, api.plural, id=f"watch-{api.plural}")(_owner_event(owner.kind))
    for child in kinds.CHILDREN:
        if child.watched:  # only objects labelled as managed by the operator
            kopf.on.event(child.group, child.version, child.plural, labels=dict(MANAGED_BY),
                          id=f"watch-{child.plural}")(_child_event)
    for referenced in kinds.REFERENCED:
        kopf.on.event(referenced.group, referenced.version, referenced.plural,
                      id=f"watch-{referenced.plural}")(_referenced_event)


register()
