"""The API's directory of rooms and channels, kept equal to the ChatRooms and StreamChannels of each platform.

The operator declares every room and channel of a platform to the platform's API (`PUT
/api/v1/admin/{rooms|channels}/{name}`: title, visibility, a room's members and listen-along channel) and
removes those whose resource is gone (`DELETE`). It authenticates with the platform's directory credential:
a random token generated once into the Secret `<platform>-directory` (owned by the platform), which the API
pods receive as `VEZA_DIRECTORY_TOKEN` and accept on the directory endpoints only.

Level-based, per platform: what the resources ask for is compared with what the operator knows the API
holds, and only the differences are sent. What the API holds is listed (`GET /api/v1/admin/{rooms|channels}`)
on first contact (after a start or a failover) and every `directory_relist_seconds`, so a resource deleted
while the operator or the API was down leaves the directory too, and a row changed by hand is put back.
This runs beside the reconciles, never inside one: an API that does not answer (not started yet, scaled to
zero, no pods at all) delays nothing else; it is retried with backoff, and the rooms and channels say so in
their `DirectorySynced` condition (which never touches `Ready`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from pydantic import ValidationError

from veza_core.specs import ChatRoomSpec, StreamChannelSpec

from . import manifests, placement, wiring
from .conditions import now
from .controller import Context, Key
from .models import VezaPlatformSpec
from .naming import COMPONENT_LABEL, PLATFORM_LABEL, Owner, metadata
from .settings import Settings

log = logging.getLogger("veza.operator")

CONDITION = "DirectorySynced"
API_COMPONENT = "api"  # platform.API_COMPONENT (platform.py imports this module)
NAMESPACE_LABEL = "kubernetes.io/metadata.name"
TOKEN_KEY = "token"  # noqa: S105 - the key's name in the Secret
KINDS = {"ChatRoom": "room", "StreamChannel": "channel"}
PLURALS = {"room": "rooms", "channel": "channels"}
Entry = tuple[str, str]  # ("room" | "channel", name)


# -- pure builders ---------------------------------------------------------------------------------

def secret_name(platform: str) -> str:
    return f"{platform}-directory"


def secret(owner: Owner) -> dict[str, Any]:
    """The platform's directory credential: created once, never rewritten (the API reads it at start)."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": metadata(secret_name(owner.name), owner, {PLATFORM_LABEL: owner.name}),
            "stringData": {TOKEN_KEY: secrets.token_urlsafe(32)}}


def declaration(kind: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """What the API is told of a ChatRoom or StreamChannel (the body of its PUT); None for an invalid spec."""
    name = body["metadata"]["name"]
    try:
        if kind == "ChatRoom":
            room = ChatRoomSpec.model_validate(body.get("spec") or {})
            state = placement.parse_state((body.get("status") or {}).get("placement"))
            return {"title": room.title or name, "visibility": room.visibility,
                    "members": [{"user": m.user, "role": m.role} for m in room.members],
                    "channel": room.channel_ref.name if room.channel_ref is not None else None,
                    # What a pool worker serves the room with (what its own workers get in VEZA_RESOURCE_SPEC),
                    # and who serves it (placement.declared).
                    "spec": wiring.worker_spec(body.get("spec")),
                    "placement": placement.declared(room.placement, state)}
        channel = StreamChannelSpec.model_validate(body.get("spec") or {})
        return {"title": channel.title or name, "visibility": channel.visibility,
                "renditions": [{"name": r.name, "codec": r.codec} for r in channel.renditions]}
    except ValidationError:
        return None


Declare = Callable[[str, dict[str, Any]], "dict[str, Any] | None"]


def desired(owners: dict[Key, dict[str, Any]], namespace: str, platform: str, declare: Declare = declaration
            ) -> dict[Entry, dict[str, Any]]:
    """Every room and channel of the platform that the directory should list (none that is being deleted)."""
    out: dict[Entry, dict[str, Any]] = {}
    for (kind, ns, name), body in owners.items():
        if kind not in KINDS or ns != namespace or body["metadata"].get("deletionTimestamp"):
            continue
        if ((body.get("spec") or {}).get("platformRef") or {}).get("name") != platform:
            continue
        found = declare(kind, body)
        if found is not None:
            out[(KINDS[kind], name)] = found
    return out


def api_url(template: str, platform: str, namespace: str) -> str:
    return template.format(platform=platform, namespace=namespace).rstrip("/")


@dataclass(frozen=True)
class Outcome:
    synced: bool
    reason: str
    message: str


def condition(outcome: Outcome, generation: int, previous: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The DirectorySynced condition; it keeps its lastTransitionTime while its status holds."""
    status = "True" if outcome.synced else "False"
    old = next((c for c in previous or [] if c.get("type") == CONDITION), None)
    since = old["lastTransitionTime"] if old and old.get("status") == status else now()
    return {"type": CONDITION, "status": status, "reason": outcome.reason, "message": outcome.message,
            "lastTransitionTime": since, "observedGeneration": generation}


# -- talking to the API ----------------------------------------------------------------------------

class Unreachable(Exception):
    """The API did not answer, or not usefully (5xx, 429, 401): the whole round is tried again later."""


@dataclass
class PlatformDirectory:
    """What the operator knows of one platform's directory."""

    uid: str
    token: str | None = None
    # What the API holds, as far as known: the declaration last sent (or, after a listing, what the row says).
    known: dict[Entry, dict[str, Any]] | None = None
    listed_at: float = 0.0
    failures: int = 0
    outcome: Outcome | None = None  # of the last round: every entry without a refusal of its own
    refused: dict[Entry, Outcome] = field(default_factory=dict)  # entries the API answered 4xx for


def _listed(row: dict[str, Any], kind: str) -> dict[str, Any]:
    """What a listed row tells of its declaration (members are not listed: an entry compares unequal)."""
    found = {"title": row.get("title"), "visibility": row.get("visibility")}
    if kind == "room":
        found |= {"channel": row.get("channel"), "members": None}
        found |= {k: row[k] for k in ("spec", "placement") if k in row}  # an older API lists neither
    else:
        found |= {"renditions": row.get("renditions")}
    return found


def _same_row(known: dict[str, Any], row: dict[str, Any]) -> bool:
    """Whether a declaration sent before still matches its listed row (members aside: they are not listed)."""
    return all(known.get(k) == v for k, v in row.items() if k != "members")


class DirectorySync:
    """One task per platform while it has something to send; at most one round per platform at a time."""

    def __init__(self, ctx: Context, settings: Settings, on_change: Callable[[Key], None],
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self.settings = settings
        self.on_change = on_change  # a room or channel whose condition changed: reconcile it
        self.clock = clock
        self.platforms: dict[Key, PlatformDirectory] = {}
        self.tasks: dict[Key, asyncio.Task[None]] = {}
        self.again: set[Key] = set()
        # Declarations by resource, uid and generation: a round (one per burst of events, status echoes
        # included) parses only the specs that changed.
        self.declarations: dict[Key, tuple[str, int, str | None, dict[str, Any] | None]] = {}
        self.paused = True
        self._http: aiohttp.ClientSession | None = None
        self.load_tasks: dict[Key, asyncio.Task[None]] = {}  # per platform: its rooms' load, read periodically

    # -- what the rest of the operator calls

    def request(self, platform: Key) -> None:
        if self.paused:
            return
        follower = self.load_tasks.get(platform)
        if follower is None or follower.done():
            self.load_tasks[platform] = asyncio.get_running_loop().create_task(self._follow_load(platform),
                                                                               name=f"load-{platform[2]}")
        task = self.tasks.get(platform)
        if task is not None and not task.done():
            self.again.add(platform)
            return
        self.tasks[platform] = asyncio.get_running_loop().create_task(self._follow(platform),
                                                                      name=f"directory-{platform[2]}")

    def request_namespace(self, namespace: str) -> None:
        """A room or channel changed: every platform of its namespace (it may have moved between two)."""
        for key in list(self.ctx.store.owners):
            if key[0] == "VezaPlatform" and key[1] == namespace:
                self.request(key)

    def condition_for(self, key: Key, generation: int, previous: list[dict[str, Any]] | None
                      ) -> dict[str, Any] | None:
        """The DirectorySynced condition of a room or channel: the previous one until its platform's directory
        was tried (after a restart or a failover nothing changes before the first round has a result)."""
        body = self.ctx.store.owners.get(key)
        platform = ((body or {}).get("spec") or {}).get("platformRef", {}).get("name")
        state = self.platforms.get(("VezaPlatform", key[1], platform or ""))
        outcome = None if state is None else state.refused.get((KINDS[key[0]], key[2])) or state.outcome
        if outcome is None:
            return next((dict(c) for c in previous or [] if c.get("type") == CONDITION), None)
        return condition(outcome, generation, previous)

    def declared_placement(self, key: Key) -> str | None:
        """The placement the room's platform's API holds for it, as far as known (None: not known)."""
        body = self.ctx.store.owners.get(key)
        platform = ((body or {}).get("spec") or {}).get("platformRef", {}).get("name")
        state = self.platforms.get(("VezaPlatform", key[1], platform or ""))
        if state is None or state.known is None:
            return None
        found = (state.known.get(("room", key[2])) or {}).get("placement")
        return found if isinstance(found, str) else None

    def pause(self) -> None:
        self.paused = True
        for task in (*self.tasks.values(), *self.load_tasks.values()):
            task.cancel()
        self.tasks.clear()
        self.load_tasks.clear()
        self.ctx.loads.clear()
        self.again.clear()
        self.platforms.clear()
        self.declarations.clear()

    def resume(self) -> None:
        self.paused = False

    async def close(self) -> None:
        self.pause()
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- the rounds

    async def _follow(self, platform: Key) -> None:
        while True:
            self.again.discard(platform)
            delay = await self._round(platform)
            if delay is not None:
                await asyncio.sleep(delay)
            elif platform not in self.again:
                return

    async def _round(self, key: Key) -> float | None:
        """One comparison of a platform's resources with its directory; the delay before trying again."""
        body = self.ctx.store.owners.get(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.platforms.pop(key, None)  # its API goes with it
            return None
        try:
            VezaPlatformSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            return None  # the platform reports it; nothing serves a directory
        uid = body["metadata"].get("uid", "")
        state = self.platforms.get(key)
        if state is None or state.uid != uid:
            state = self.platforms[key] = PlatformDirectory(uid=uid)
        before = (state.outcome, dict(state.refused))
        try:
            await self._sync(key, state)
        except Unreachable as exc:
            state.failures += 1
            # A stable message: the condition changes (one status write) when the outcome does, not per attempt.
            state.outcome = Outcome(False, "ApiUnreachable", "The platform's API does not answer the operator yet "
                                                             "(retried with backoff); the directory may be stale.")
            if state.failures in (1, 10) or state.failures % 100 == 0:
                log.info("directory: API not reachable", extra={"platform": "/".join(key[1:]), "error": str(exc),
                                                                "attempt": state.failures})
            self._changed(key, state, before)
            return min(self.settings.directory_retry_max_seconds, float(2 ** min(state.failures - 1, 10)))
        state.failures = 0
        state.outcome = Outcome(True, "Declared", "The platform's API lists it as declared.")
        self._changed(key, state, before)
        return None

    def _changed(self, key: Key, state: PlatformDirectory, before: tuple[Outcome | None, dict[Entry, Outcome]]
                 ) -> None:
        """Reconcile the rooms and channels whose condition changes (the reconcile writes it)."""
        outcome, refused = before
        for kind, plural in (("ChatRoom", "room"), ("StreamChannel", "channel")):
            for ref in self.ctx.store.referencing(kind, key[1], key[2]):
                entry = (plural, ref[2])
                if (refused.get(entry) or outcome) != (state.refused.get(entry) or state.outcome):
                    self.on_change(ref)

    async def _sync(self, key: Key, state: PlatformDirectory) -> None:
        _, namespace, platform = key
        if state.token is None:
            state.token = await self._token(namespace, platform)
        base = api_url(self.settings.directory_url, platform, namespace)
        wanted = desired(self.ctx.store.owners, namespace, platform, self._declaration)
        for gone in [k for k in self.declarations if k not in self.ctx.store.owners]:
            del self.declarations[gone]
        if state.known is None or self.clock() - state.listed_at >= self.settings.directory_relist_seconds:
            state.known = await self._list(base, state)
            state.listed_at = self.clock()
        for entry, decl in sorted(wanted.items()):
            if state.known.get(entry) == decl and entry not in state.refused:
                continue
            status, text = await self._send(state, "PUT", f"{base}/api/v1/admin/{PLURALS[entry[0]]}/{entry[1]}", decl)
            if status in (200, 201):
                moved = (state.known.get(entry) or {}).get("placement") != decl.get("placement")
                state.known[entry] = decl
                state.refused.pop(entry, None)
                if entry[0] == "room" and moved:  # a demotion waits for this (placement.py)
                    self.on_change(("ChatRoom", namespace, entry[1]))
            else:  # this entry's declaration is refused (e.g. a member id that is not a user id)
                state.known.pop(entry, None)
                state.refused[entry] = Outcome(False, "Refused", f"The API refused the declaration ({status}): "
                                                                 f"{text[:300]}")
        for entry in sorted(set(state.known) - set(wanted)):
            status, _ = await self._send(state, "DELETE", f"{base}/api/v1/admin/{PLURALS[entry[0]]}/{entry[1]}")
            if status in (204, 404):
                del state.known[entry]
        for entry in set(state.refused) - set(wanted):
            del state.refused[entry]

    def _declaration(self, kind: str, body: dict[str, Any]) -> dict[str, Any] | None:
        meta = body["metadata"]
        # A room's placement is in its status: a move changes the declaration without a new generation.
        state = (body.get("status") or {}).get("placement") if kind == "ChatRoom" else None
        key = (kind, meta["namespace"], meta["name"])
        version = (meta.get("uid", ""), meta.get("generation", 0), state)
        known = self.declarations.get(key)
        if known is None or known[:3] != version:
            known = self.declarations[key] = (*version, declaration(kind, body))
        return known[3]

    # -- the rooms' load (placement.py): read with the directory's credential, kept in memory only

    async def _follow_load(self, key: Key) -> None:
        while True:
            body = self.ctx.store.owners.get(key)
            if body is None or body["metadata"].get("deletionTimestamp"):
                self.ctx.loads.pop(key, None)
                return
            state = self.platforms.get(key)
            if state is not None and state.token is not None and state.failures == 0:
                # The directory's rounds report an API that does not answer; the last load is kept.
                with contextlib.suppress(Unreachable):
                    await self._read_load(key, state)
            await asyncio.sleep(self.settings.load_interval_seconds)

    async def _read_load(self, key: Key, state: PlatformDirectory) -> None:
        base = api_url(self.settings.directory_url, key[2], key[1])
        status, _, found = await self._call(state, "GET", f"{base}/api/v1/admin/rooms/load")
        if status == 401:
            state.token = None
        if status != 200 or not isinstance(found, dict):
            return  # an API without the route: the load stays unknown, Auto rooms stay where they are
        loads = {}
        for row in found.get("rooms") or []:
            if isinstance(row, dict) and isinstance(row.get("name"), str):
                loads[row["name"]] = placement.RoomLoad(int(row.get("connections") or 0),
                                                        float(row.get("messages_per_second") or 0.0),
                                                        int(row.get("replicas") or 0))
        previous = self.ctx.loads.get(key)
        self.ctx.loads[key] = loads
        self._load_changed(key, previous, loads)

    def _load_changed(self, key: Key, previous: dict[str, placement.RoomLoad] | None,
                      loads: dict[str, placement.RoomLoad]) -> None:
        """Reconcile the Auto rooms the new load would move, and the platform when its pool's load changed."""
        body = self.ctx.store.owners.get(key)
        try:
            spec = VezaPlatformSpec.model_validate((body or {}).get("spec") or {})
        except ValidationError:
            return
        total = sum(load.connections for load in loads.values())
        if previous is None or total != sum(load.connections for load in previous.values()):
            self.on_change(key)  # the pool's size follows its connections
        now = datetime.now(UTC)
        for ref in self.ctx.store.referencing("ChatRoom", key[1], key[2]):
            room = self.ctx.store.owners[ref]
            if (room.get("spec") or {}).get("placement", "Auto") != "Auto":
                continue
            status = room.get("status") or {}
            current = placement.parse_state(status.get("placement"))
            changed = status.get("placementChangedAt")
            since = datetime.fromisoformat(changed.replace("Z", "+00:00")) if isinstance(changed, str) else None
            target = placement.desired_placement("Auto", current, loads.get(ref[2], placement.RoomLoad()), since,
                                                 now, spec.chat.autopilot, pool_enabled=spec.chat.pool.enabled)
            if target != placement.settled(current):
                self.on_change(ref)

    async def _token(self, namespace: str, platform: str) -> str:
        found = await self.ctx.client.get("Secret", namespace, secret_name(platform))
        raw = ((found or {}).get("data") or {}).get(TOKEN_KEY)
        if not raw:
            raise Unreachable(f"the Secret {secret_name(platform)} holds no {TOKEN_KEY} yet")
        return base64.b64decode(raw).decode()

    async def _list(self, base: str, state: PlatformDirectory) -> dict[Entry, dict[str, Any]]:
        """What the API lists, each row as known before when it still says the same (so it is not sent again)."""
        known: dict[Entry, dict[str, Any]] = {}
        for kind, plural in PLURALS.items():
            status, text, found = await self._call(state, "GET", f"{base}/api/v1/admin/{plural}")
            if status != 200 or not isinstance(found, dict):
                raise Unreachable(f"listing {plural} answered {status}: {text[:200]}")
            for row in found.get(plural) or []:
                entry, listed = (kind, row["name"]), _listed(row, kind)
                previous = (state.known or {}).get(entry)
                known[entry] = previous if previous is not None and _same_row(previous, listed) else listed
        return known

    async def _send(self, state: PlatformDirectory, method: str, url: str, body: Any = None) -> tuple[int, str]:
        status, text, _ = await self._call(state, method, url, body)
        if status >= 500 or status in (401, 429):
            if status == 401:
                state.token = None  # a new credential (the Secret re-created): read it again
            raise Unreachable(f"{method} {url.rsplit('/api/v1/', 1)[-1]} answered {status}")
        return status, text

    async def _call(self, state: PlatformDirectory, method: str, url: str, body: Any = None
                    ) -> tuple[int, str, Any]:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
                total=self.settings.directory_timeout_seconds), headers={"User-Agent": "veza-operator"})
        try:
            async with self._http.request(method, url, json=body,
                                          headers={"Authorization": f"Bearer {state.token}"}) as resp:
                text = await resp.text()
                parsed = await resp.json(content_type=None) if resp.content_type == "application/json" else None
                return resp.status, text, parsed
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}") from None


def api_ingress_policy(owner: Owner, settings: Settings) -> dict[str, Any] | None:
    """Admits the operator's pods to the platform's API pods (HTTP), for the directory; None when the operator
    does not say where its pods run (run outside the cluster, it needs no such policy)."""
    if not settings.operator_namespace or not settings.operator_pod_labels:
        return None
    api_pods = {"matchLabels": {PLATFORM_LABEL: owner.name, COMPONENT_LABEL: API_COMPONENT}}
    labels = dict(label.split("=", 1) for label in settings.operator_pod_labels)
    operator_pods = {"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: settings.operator_namespace}},
                     "podSelector": {"matchLabels": labels}}
    return manifests.network_policy(f"{owner.name}-api-from-operator", owner, {PLATFORM_LABEL: owner.name},
                                    api_pods, ingress=[{"from": [operator_pods],
                                                        "ports": manifests.tcp(wiring.HTTP_PORT)}])


async def ensure_secret(ctx: Context, owner: Owner) -> None:
    """Create the platform's directory credential unless it exists (never rewritten: the API pods hold it).

    Known Secrets are remembered by the admission check (`Context.secrets_seen`): no request once seen.
    """
    name = secret_name(owner.name)
    if (owner.namespace, name) in ctx.secrets_seen:
        return
    if await ctx.client.get_metadata("Secret", owner.namespace, name) is None:
        await ctx.client.create(secret(owner))
