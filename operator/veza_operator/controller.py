"""Level-triggered reconciliation: an in-memory view of the cluster and a work queue.

kopf watches the custom resources and their children and feeds every event
into the `Store`; the event handlers only ask for a reconcile of the affected
custom resource. The `Reconciler` runs at most one reconcile per resource at a
time, merges repeated requests, and retries failures with backoff.

A reconcile compares what it wants with what the store already holds and
writes only the differences, so a no-op reconcile (a resync, a restart, a
status event echoing our own patch) makes no API write at all.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import math
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram

from .conditions import same_status
from .kube import ApiError, ApiKind, KubeClient, is_subset
from .naming import OWNER_KIND, OWNER_NAME, foreign
from .settings import Settings

if TYPE_CHECKING:
    from .directory import DirectorySync
    from .placement import RoomLoad

log = logging.getLogger("veza.operator")
tracer = trace.get_tracer("veza.operator")

Key = tuple[str, str, str]  # kind, namespace, name

RECONCILES = Counter("veza_operator_reconciles_total", "Reconciles run", ["kind", "result"])
RECONCILE_SECONDS = Histogram("veza_operator_reconcile_duration_seconds", "Reconcile duration", ["kind"],
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
RETRIES = Counter("veza_operator_retries_total", "Reconciles scheduled again after a failure", ["kind"])
WRITES = Counter("veza_operator_api_writes_total", "Write requests sent to the API server", ["kind", "verb"])
QUEUE_DEPTH = Gauge("veza_operator_queue_depth", "Reconciles waiting to run")



def _slim(body: dict[str, Any], *, keep_status: bool = True) -> dict[str, Any]:
    """What the store keeps of an object: no managedFields (large, never read), no status nobody
    reads, and shared strings: thousands of children repeat the same keys and most values, and every
    parsed body would otherwise hold its own copies of them."""
    slim = {k: v for k, v in body.items() if k != "status" or keep_status}
    slim["metadata"] = {k: v for k, v in body.get("metadata", {}).items() if k != "managedFields"}
    shared: dict[str, Any] = _shared(slim)
    return shared


def _shared(value: Any) -> Any:
    if isinstance(value, dict):
        return {sys.intern(k): _shared(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shared(v) for v in value]
    if isinstance(value, str) and len(value) <= 64:
        return sys.intern(value)
    return value


def _older(new: dict[str, Any], current: dict[str, Any] | None) -> bool:
    """Whether `new` is an older version than `current`.

    resourceVersions are opaque by contract but are etcd revisions in practice; when
    they are not numbers we cannot tell and take the newer arrival.
    """
    if current is None:
        return False
    try:
        return int(new["metadata"]["resourceVersion"]) < int(current["metadata"]["resourceVersion"])
    except (KeyError, ValueError):
        return False


@dataclass
class Store:
    """The latest body of every custom resource and every child, by (kind, namespace, name).

    A child's status is kept only for the kinds in `status_read` (`kinds.STATUS_READ`).
    """

    status_read: frozenset[str] = frozenset()
    owners: dict[Key, dict[str, Any]] = field(default_factory=dict)
    children: dict[Key, dict[str, Any]] = field(default_factory=dict)
    # Each owner's children by the owner labels: every reconcile asks for them, and a scan of all children
    # per reconcile made a resync of 10,000 pooled rooms (10,000 Ingresses) cost 5 ms per room.
    _by_owner: dict[Key, set[Key]] = field(default_factory=dict)

    def put_owner(self, body: dict[str, Any]) -> Key:
        key = (body["kind"], body["metadata"]["namespace"], body["metadata"]["name"])
        if not _older(body, self.owners.get(key)):  # a list's answer may be older than an event
            self.owners[key] = _slim(body)
        return key

    def put_child(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        key = (body["kind"], meta["namespace"], meta["name"])
        if _older(body, self.children.get(key)):
            return  # a watch event still on its way when our own write's answer arrived
        self.remove_child(key)
        self.children[key] = slim = _slim(body, keep_status=body["kind"] in self.status_read)
        if (owner := _owner_of(slim)) is not None:
            self._by_owner.setdefault(owner, set()).add(key)

    def remove_child(self, key: Key) -> None:
        body = self.children.pop(key, None)
        if body is not None and (owner := _owner_of(body)) is not None and (keys := self._by_owner.get(owner)):
            keys.discard(key)
            if not keys:
                del self._by_owner[owner]

    def clear_children(self) -> None:
        self.children.clear()
        self._by_owner.clear()

    def owned_by(self, owner: Key) -> list[dict[str, Any]]:
        """The children `owner` made: labelled as its, and controlled by it. Labels alone are not enough: KEDA
        copies a ScaledObject's labels to the HPA it makes (controlled by the ScaledObject), never ours to prune."""
        kind, _, name = owner
        found = (self.children[key] for key in self._by_owner.get(owner, ()))
        return [c for c in found if _controlled_by(c, kind, name)]

    def referencing(self, kind: str, namespace: str, platform: str) -> list[Key]:
        return [k for k, body in self.owners.items() if k[0] == kind and k[1] == namespace
                and (body.get("spec") or {}).get("platformRef", {}).get("name") == platform]


def _owner_of(body: dict[str, Any]) -> Key | None:
    labels = body["metadata"].get("labels") or {}
    kind, name = labels.get(OWNER_KIND), labels.get(OWNER_NAME)
    return (kind, body["metadata"].get("namespace", ""), name) if kind and name else None


def _controlled_by(body: dict[str, Any], kind: str, name: str) -> bool:
    refs = body["metadata"].get("ownerReferences") or []
    controller = next((ref for ref in refs if ref.get("controller")), None)
    return controller is None or (controller.get("kind") == kind and controller.get("name") == name)


@dataclass
class Context:
    """What a reconcile function needs: the API client, the store, and what this process remembers."""

    client: KubeClient
    store: Store
    requeue: Callable[[Key, float], None] = lambda key, delay: None
    kinds: Mapping[str, ApiKind] = field(default_factory=dict)  # `kinds.API`
    prunable: frozenset[str] = frozenset()  # kinds a reconcile may delete (`kinds.PRUNABLE`)
    capability_ttl: float = 60.0  # how long the answer to "is this optional API served?" is trusted
    capabilities: dict[tuple[str, str], tuple[bool, float]] = field(default_factory=dict)
    # Referenced Secrets (namespace, name) -> when seen and their labels and owners, remembered briefly so
    # that bursts of reconciles (a thousand rooms created at once) do not turn into a thousand GETs.
    secrets_seen: dict[tuple[str, str], tuple[float, dict[str, Any]]] = field(default_factory=dict)
    settings: Settings = field(default_factory=Settings)  # what resource authors may ask for (admission.py)
    directory: DirectorySync | None = None  # the API directories kept equal to the rooms and channels
    # Each platform's rooms' load as its API last reported it (directory.py reads it); absent: not known.
    loads: dict[Key, dict[str, RoomLoad]] = field(default_factory=dict)

    async def capability(self, kind: str) -> bool:
        """Whether an optional API (e.g. ServiceMonitor) is served; re-asked at most once per `capability_ttl`."""
        api = self.kinds[kind]
        known = self.capabilities.get((api.group_version, api.plural))
        if known is not None and time.monotonic() - known[1] < self.capability_ttl:
            return known[0]
        served = await self.client.serves(api.group_version, api.plural)
        self.capabilities[(api.group_version, api.plural)] = (served, time.monotonic())
        return served

    async def sync_children(self, owner: Key, desired: list[dict[str, Any]], *, prune: bool = True) -> list[str]:
        """Apply the children that differ from what the store holds; delete ours that are no longer wanted.

        A child whose name an object of someone else holds is left alone (never adopted: applying would
        take it over, and the garbage collector would delete it with our owner). Returns those, as
        "Kind/name".
        """
        conflicts = []
        wanted = set()
        for manifest in desired:
            key = (manifest["kind"], manifest["metadata"]["namespace"], manifest["metadata"]["name"])
            wanted.add(key)
            # The store holds only what is labelled as ours; anything else of that name is asked for.
            observed = self.store.children.get(key) or await self.client.get(*key)
            if observed is not None and foreign(manifest, observed):
                conflicts.append(f"{key[0]}/{key[2]}")
                continue
            if observed is not None and is_subset(manifest, observed):
                continue
            applied = await self.client.apply(manifest)
            WRITES.labels(manifest["kind"], "apply").inc()
            if applied:
                self.store.put_child(applied)  # so the next reconcile does not apply it again
        for child in self.store.owned_by(owner) if prune else []:
            key = (child["kind"], child["metadata"]["namespace"], child["metadata"]["name"])
            if key not in wanted and key[0] in self.prunable:
                await self.client.delete(*key)
                WRITES.labels(key[0], "delete").inc()
                self.store.remove_child(key)
        return conflicts

    async def report(self, key: Key, status: dict[str, Any]) -> bool:
        """Patch the status when it changed; returns whether it wrote."""
        body = self.store.owners.get(key)
        if body is None or same_status(status, body.get("status")):
            return False
        await self.client.patch_status(*key, status)
        WRITES.labels(key[0], "status").inc()
        body["status"] = {**(body.get("status") or {}), **status}
        return True



async def post_event(ctx: Context, body: dict[str, Any], type: str, reason: str, message: str) -> None:
    """A Kubernetes Event (on transitions only); failing to post one never fails a reconcile."""
    try:
        await ctx.client.post_event(body, type=type, reason=reason, message=message)
        WRITES.labels("Event", "create").inc()
    except Exception as exc:
        log.warning("could not post event", extra={"error": repr(exc)})


ReconcileFn = Callable[[Context, Key], Awaitable[None]]

TRIM_AFTER = 50  # reconciles in a burst after which freed heap memory is handed back


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Hand free heap pages back to the system.

    After a burst (start-up, a platform change rolling every room) glibc keeps the pages of the
    bodies and manifests parsed meanwhile, scattered through its heap, and the operator's RSS would
    stay at the burst's high-water mark.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class Reconciler:
    """A deduplicating work queue of reconciles with per-key serialisation and retry backoff."""

    def __init__(self, ctx: Context, handlers: Mapping[str, ReconcileFn], *, workers: int = 16,
                 max_backoff: float = 60.0) -> None:
        self.ctx = ctx
        self.handlers = handlers
        self.workers = workers
        self.max_backoff = max_backoff
        self.queue: asyncio.Queue[Key] = asyncio.Queue()
        self.pending: set[Key] = set()
        self.running: set[Key] = set()
        self.again: set[Key] = set()  # requested while running: run once more afterwards
        self.failures: dict[Key, int] = {}
        self.due: dict[Key, float] = {}  # when the earliest delayed request of a key fires (loop time)
        self.tasks: list[asyncio.Task[None]] = []
        self.since_trim = 0
        self.paused = False  # a standby replica: requests are dropped until it resumes
        ctx.requeue = self.request_later
        for kind in handlers:  # every series an alert or a dashboard panel reads exists at 0 from the start
            RECONCILES.labels(kind, "ok")
            RECONCILES.labels(kind, "error")
            RETRIES.labels(kind)
            RECONCILE_SECONDS.labels(kind)
            WRITES.labels(kind, "status")

    def request(self, key: Key) -> None:
        if key[0] not in self.handlers or self.paused:
            return
        if key in self.running:
            self.again.add(key)
        elif key not in self.pending:
            self.pending.add(key)
            self.queue.put_nowait(key)
            QUEUE_DEPTH.set(len(self.pending))

    def request_later(self, key: Key, delay: float) -> None:
        """Request `key` after `delay`, unless a delayed request of it already fires sooner.

        A resource waiting for something (a Secret, an API) asks again on every reconcile; without
        this, each resync or event would start one more chain of delayed reconciles that never ends.
        """
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        if self.due.get(key, math.inf) <= due:
            return
        self.due[key] = due

        def fire() -> None:
            if self.due.get(key) == due:
                del self.due[key]
            self.request(key)

        loop.call_later(delay, fire)

    def pause(self) -> None:
        """Drop every waiting and delayed request; reconciles already running finish."""
        self.paused = True
        self.pending.clear()
        self.again.clear()
        self.due.clear()
        self.failures.clear()
        while not self.queue.empty():
            self.queue.get_nowait()
        QUEUE_DEPTH.set(0)

    def resume(self) -> None:
        self.paused = False

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._work(), name=f"reconciler-{i}") for i in range(self.workers)]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def _failed(self, key: Key, exc: Exception) -> None:
        attempt = self.failures.get(key, 0) + 1
        self.failures[key] = attempt
        delay = min(self.max_backoff, 0.5 * 2 ** (attempt - 1))
        log.warning("reconcile failed, retrying", extra={"key": "/".join(key), "attempt": attempt,
                                                         "retry_in": delay, "error": repr(exc)})
        RECONCILES.labels(key[0], "error").inc()
        RETRIES.labels(key[0]).inc()
        self.request_later(key, delay)

    async def _work(self) -> None:
        while True:
            key = await self.queue.get()
            self.pending.discard(key)
            QUEUE_DEPTH.set(len(self.pending))
            self.running.add(key)
            started = time.perf_counter()
            # One trace per reconcile: its API-server calls are the spans below it (kube.py).
            span = tracer.start_span(f"reconcile {key[0]}", attributes={
                "veza.kind": key[0], "k8s.namespace.name": key[1], "veza.name": key[2]})
            try:
                with trace.use_span(span, end_on_exit=True, record_exception=True, set_status_on_exception=True):
                    await self.handlers[key[0]](self.ctx, key)
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                if exc.status == 403 and "being terminated" in str(exc.body):
                    self.failures.pop(key, None)  # its namespace is going away: nothing left to do
                else:
                    self._failed(key, exc)
            except Exception as exc:
                self._failed(key, exc)
            else:
                self.failures.pop(key, None)
                RECONCILES.labels(key[0], "ok").inc()
            finally:
                RECONCILE_SECONDS.labels(key[0]).observe(time.perf_counter() - started)
                self.running.discard(key)
                if key in self.again:
                    self.again.discard(key)
                    self.request(key)
                self.since_trim += 1
                if self.since_trim >= TRIM_AFTER and not self.pending and not self.running:
                    self.since_trim = 0
                    release_freed_memory()
