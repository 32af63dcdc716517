"""The chat service of one room on one worker: its lifecycle and the room's shared state.

A worker (worker.py) holds one `ChatService` per room it serves: one for a dedicated worker, as many
as are in use for a pool worker. It owns what every socket of the room shares: the store and its group
committer, the sequencer (`Room`), fan-out to the other replicas, presence, the active sanctions, and
the draining flag; what every room shares (connections, keys, the loops that poll, heartbeat and report
load) is the worker's. Per-socket work lives in session.py, authorisation in access.py, the HTTP
handlers in routes.py.

Its own tasks: for a room bound to a stream channel, the consumer of the channel's track changes
(listen.py); the rest is driven by the worker's loops (`polled`, `heard`, `flush_presence`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from nats.js import JetStreamContext
from opentelemetry import trace

from veza_core import bus, events
from veza_core.auth import Principal
from veza_core.ratelimit import RateLimiter
from veza_core.tracing import child_span
from veza_core.web import HttpError

from . import access, inbound, listen, metrics
from . import protocol as p
from .cache import RecentCache
from .fanout import Fanout
from .presence import Presence
from .room import Client, Encoded, Room, encode
from .spec import RoomSpec
from .store import GroupCommitter, Store

if TYPE_CHECKING:
    from .worker import ChatWorker

log = logging.getLogger("veza.chat")
tracer = trace.get_tracer("veza.chat")

class ChatService:
    def __init__(self, worker: ChatWorker, room: str, spec: RoomSpec) -> None:
        settings = worker.settings
        self.worker = worker
        self.settings = settings
        self.clock = worker.clock  # epoch seconds: sanction expiry and retention by age
        self.room_name = room
        self.spec = spec
        self.worker_id = worker.worker_id
        self.verifier = worker.verifier
        self.revocations = worker.revocations
        self.redis = worker.redis
        breaker = worker.breaker
        prefix = f"veza:{settings.platform}:chat:{self.room_name}"
        self.limiter = RateLimiter(self.redis, prefix=f"{prefix}:rl", breaker=breaker, scripts=worker.scripts)
        self.cache = RecentCache(self.redis, f"{prefix}:recent", breaker) if self.redis is not None else None
        self.presence = Presence(self.redis, prefix, self.worker_id, breaker,
                                 members_key=f"veza:{settings.platform}:room:{self.room_name}:members",
                                 ttl=settings.chat_presence_ttl_seconds)
        assert settings.database_url is not None
        self.store = Store(settings.database_url, self.room_name, hold_writer=not worker.pooled)
        self.room = Room(self.room_name, self._fetch_after, self.cache.range if self.cache else None, clock=self.clock,
                         replay_after=self.store.events_through,
                         last_committed=self.store.last_seq, on_system=self._system_event)
        self.committer = GroupCommitter(self.store, self._committed)
        self.fanout = Fanout(worker.link, platform=settings.platform, room=self.room_name,
                             worker_id=self.worker_id, on_events=self._remote_events, on_signal=self._on_signal,
                             on_membership=self.membership_changed, on_jetstream=self._jetstream)
        # Listen-along: the bound channel's track changes go into the timeline; the newest is in every welcome.
        bound = self.spec.channel_ref.name if self.spec.channel_ref else None
        self.follower = listen.Follower(platform=settings.platform, room=self.room_name, channel=bound,
                                        store=self.store_now_playing) if bound and settings.nats_url else None
        self.now_playing: dict[str, Any] | None = None  # the newest `nowplaying` event's now_playing, with its seq
        self.known_last = 0  # the room's last seq as PostgreSQL last said
        self.seen_last = 0  # what the previous poll saw
        self.sanctions: dict[tuple[str, str], float | None] = {}  # (user, ban|mute) -> until (epoch) or None
        self.booted = asyncio.Event()
        self.draining = False
        self.tasks: list[asyncio.Task[Any]] = []
        self.presence_joined: dict[str, str] = {}
        self.presence_left: set[str] = set()
        self.touched = time.monotonic()  # the last request (a pool worker releases rooms idle for long)
        self.committed_since = 0  # events committed here since the last load snapshot
        # The last load snapshot's connections and time (monotonic); None: last reported idle, or never.
        self.load_reported: tuple[int, float] | None = None
        self.next_retention = time.monotonic() + min(5.0, settings.chat_retention_interval_seconds)
        self.msg_rate = self.spec.limits.messages_per_minute / 60.0
        self.msg_burst = max(1.0, self.spec.limits.messages_per_minute / 6.0)
        self.frame_rate = max(20.0, 3 * self.msg_rate)
        self.frame_burst = 3 * self.frame_rate

    # -- lifecycle --------------------------------------------------------
    async def open(self, *, retry: bool) -> None:
        """Open the room on the worker's database pool: its sequence row, where it stands, its sanctions, the
        newest track of its channel. A dedicated worker retries until PostgreSQL answers (`retry`); a pool
        worker's request fails instead (503) and the next one tries again."""
        worker = self.worker
        assert worker.db is not None and worker.router is not None
        while True:
            try:
                # A pooled room is declared by the operator (the directory row is where the pool found it).
                await self.store.open(self.spec.title, self.spec.visibility, declare=not worker.pooled,
                                      shared=(worker.db, worker.router))
                last = await self.store.last_seq()
                await self._load_sanctions()
                if self.spec.channel_ref is not None:
                    newest = await self.store.last_of_kind(listen.KIND)
                    if newest is not None:
                        self._system_event(newest)
                break
            except Exception as exc:
                if not retry:
                    raise
                log.warning("database not reachable yet, retrying", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)
        self.fanout.start()
        self.room.start(last)
        self.known_last = self.seen_last = last
        self.store.wrote()  # what the primary held at boot is what reads that may lag must see, at least
        self.committer.start()
        self.booted.set()
        log.info("chat room ready", extra={"room": self.room_name, "last_seq": last, "worker": self.worker_id})

    async def shutdown(self) -> None:
        """SIGTERM or release: refuse new sends, finish the in-flight ones (ack them), close sockets with 1012."""
        self.draining = True
        grace = self.settings.shutdown_grace_seconds
        if self.booted.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.committer.drain(), grace / 2)
        inflight = [t for c in self.room.clients for t in c.inflight]
        if inflight:
            await asyncio.wait(inflight, timeout=grace / 4)
        clients = list(self.room.clients)
        loop = asyncio.get_running_loop()
        for c in clients:
            c.flush()  # acks queued by the last in-flight sends
            c.closing = True
            c.close_task = loop.create_task(c.ws.close(code=p.CLOSE_SERVICE_RESTART, message=b"service restart"))
        await asyncio.gather(*(c.close_task for c in clients if c.close_task), return_exceptions=True)
        await self.presence.withdraw()
        await self.fanout.close()

    async def cleanup(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.follower is not None:
            await self.follower.stop()
        await self.room.stop()
        if self.booted.is_set():
            await self.committer.stop()
        if self.cache is not None:
            self.cache.stop()
        await self.fanout.close()
        await self.store.close()

    def check_serving(self) -> None:
        """Refuse requests while draining (clients reconnect elsewhere) or before the room is open."""
        if self.draining:
            raise HttpError(503, p.SHUTTING_DOWN, "the worker is restarting; reconnect")
        if not self.booted.is_set():
            raise HttpError(503, "not_ready", "the worker is starting")

    def authorize(self, token: str | None) -> tuple[Principal, str]:
        """(principal, room role) of a bearer token, or an HttpError with a stable code."""
        return access.authorize(token, self.verifier, self.room_name, self.spec,
                                banned=lambda user: self.sanctioned(user, "ban"), revocations=self.revocations)

    # -- polling ----------------------------------------------------------
    async def polled(self, last: int, sanctions: list[tuple[str, str, float | None]] | None) -> None:
        """The worker's poll read the room's last committed seq (and, every few polls, its sanctions): the safety
        net under fan-out, so whatever PostgreSQL committed reaches this worker's sockets."""
        # With NATS up, only chase what stayed missing for a whole poll (fan-out is in flight otherwise).
        target = min(last, self.seen_last) if self.fanout.connected else last
        self.seen_last = last
        if last > self.known_last:
            self.store.wrote()  # committed by another replica: reads that may lag must see it
        self.known_last = max(self.known_last, last)
        if target > self.room.delivered:
            await self.room.catch_up(target)
        if sanctions is not None:
            self._apply_sanctions(sanctions)
        retention = self.spec.retention
        if (retention.days or retention.max_messages) and time.monotonic() >= self.next_retention:
            self.next_retention = time.monotonic() + self.settings.chat_retention_interval_seconds
            await self.apply_retention()

    async def apply_retention(self) -> None:
        """Delete what the spec's retention no longer keeps, and forget it in the caches."""
        retention = self.spec.retention
        removed = await self.store.apply_retention(retention.days, retention.max_messages, now=self.clock())
        if removed:
            log.info("retention applied", extra={"deleted": removed})
        first = await self.store.first_seq()
        floor = (first - 1) if first is not None else self.room.delivered
        self.room.trim(floor)
        if self.cache is not None:
            await self.cache.trim(floor)

    # -- listen-along ----------------------------------------------------------
    def _jetstream(self, js: JetStreamContext) -> None:
        if self.follower is not None and self.follower.task is None:
            self.follower.start(js)

    async def store_now_playing(self, event: events.NowPlaying) -> None:
        """A track change of the bound channel, into the timeline (once per event id), delivered like a message."""
        await self.booted.wait()
        appended = await self.store.append_system(listen.KIND, event.id, event.title, listen.meta(event))
        if appended.event is not None:
            self._committed([appended.event])

    def _system_event(self, event: dict[str, Any] | str) -> None:
        """A system event reached the timeline (in seq order, from wherever it came): the newest track is the one
        welcomes carry. Peers' frames are parsed here only for this rare kind."""
        if isinstance(event, str):
            try:
                event = json.loads(event)
            except ValueError:
                return
        assert isinstance(event, dict)
        current = listen.welcome_now_playing(event)
        if current is not None and (self.now_playing is None
                                    or current["started_at"] >= self.now_playing["started_at"]):
            self.now_playing = current

    async def _fetch_after(self, after: int, upto: int, limit: int) -> list[dict[str, Any]]:
        return await self.store.events_after(after, limit, upto)

    def _committed(self, events: list[dict[str, Any]]) -> None:
        metrics.EVENTS_COMMITTED.inc(len(events))
        self.committed_since += len(events)
        items = [encode(ev) for ev in events]
        with child_span(tracer, "chat deliver", kind=trace.SpanKind.CONSUMER,
                        attributes={"veza.room": self.room_name, "veza.events": len(items)}):
            self.room.feed(items)
        self.fanout.publish_events(items)
        if self.cache is not None:
            self.cache.push(items)

    async def history_page(self, before: int | None, after: int | None,
                           limit: int) -> tuple[list[dict[str, Any]], bool]:
        if after is not None:
            events = await self.store.events_after(after, limit + 1, (before - 1) if before else None,
                                                   replica=True)
            more = len(events) > limit
            events = events[:limit]
        else:
            events = await self.store.events_before(before or 2**62, limit + 1, replica=True)
            more = len(events) > limit
            events = events[-limit:]
        return await self.store.with_reactions(events, replica=True), more

    # -- sanctions ----------------------------------------------------------
    async def _load_sanctions(self) -> None:
        self._apply_sanctions(await self.store.sanctions())

    def _apply_sanctions(self, found: list[tuple[str, str, float | None]]) -> None:
        """The sanctions in force, as stored by moderators here, on other replicas or through the
        API; the sockets of a user banned meanwhile are closed."""
        self.sanctions = {(u, k): until for u, k, until in found}
        for user, kind in list(self.sanctions):
            if kind == "ban" and self.sanctioned(user, "ban"):
                self.close_sockets_of(user, p.CLOSE_BANNED, "ban")

    def sanctioned(self, user: str, kind: str) -> bool:
        key = (user, kind)
        if key not in self.sanctions:
            return False
        until = self.sanctions[key]
        if until is not None and until <= self.clock():
            del self.sanctions[key]
            return False
        return True

    async def moderate(self, action: str, user: str, *, by: str, seconds: int | None,
                       reason: str | None) -> None:
        """A moderator's action: stored, applied here, announced to the room on every replica."""
        until = self.clock() + seconds if seconds else None
        if action in ("mute", "ban"):
            await self.store.sanction(user, action, until, reason, by)
        elif action in ("unmute", "unban"):
            await self.store.lift(user, action[2:])
        out: dict[str, Any] = {"type": "moderation", "action": action, "user": user, "by": by}
        if until is not None:
            out["until"] = int(until * 1000)
        if reason:
            out["reason"] = reason
        data = p.dumps(out)
        self._apply_moderation(action, user, until)
        await self.room.broadcast(data)
        await self.fanout.signal({"kind": "moderation", "action": action, "user": user, "until": until,
                                  "frame": data})

    def _apply_moderation(self, action: str, user: str, until: float | None) -> None:
        if action in ("mute", "ban"):
            self.sanctions[(user, action)] = until
        elif action in ("unmute", "unban"):
            self.sanctions.pop((user, action[2:]), None)
        if action in ("kick", "ban"):
            self.close_sockets_of(user, p.CLOSE_BANNED if action == "ban" else p.CLOSE_KICKED, action)

    def rank_of(self, user: str) -> str | None:
        """The highest role this replica knows `user` to hold here: the spec's member list, and
        the roles the tokens of their open sockets carry (a role only a token grants is unknown
        while its holder is away)."""
        roles = [self.spec.member_role(user), *(c.role for c in self.room.clients if c.user == user)]
        known = [r for r in roles if r]
        return max(known, key=access.rank) if known else None

    def close_sockets_of(self, user: str, code: int, reason: str) -> None:
        for c in list(self.room.clients):
            if c.user == user:
                self.close_socket(c, code, reason)

    def close_socket(self, client: Client, code: int, reason: str) -> None:
        if not client.closing:
            client.closing = True
            self.room.clients.discard(client)
            client.close_task = asyncio.get_running_loop().create_task(
                client.ws.close(code=code, message=reason.encode()))

    # -- presence -----------------------------------------------------------
    def room_full(self, user: str) -> bool:
        """A newcomer would exceed maxMembers (a user already present may open more sockets)."""
        return not self.presence.present(user) and self.presence.count() >= self.spec.limits.max_members

    async def join(self, client: Client) -> None:
        """A socket joins: it gets the room's live events, and the room hears of a new user."""
        self.room.clients.add(client)
        metrics.CONNECTIONS.inc()
        if await self.presence.add(client.user, client.name):
            self._presence_changed(client.user, client.name, True)
        await self.fanout.signal({"kind": "presence", "op": "join", "user": client.user, "name": client.name})

    async def leave(self, client: Client) -> None:
        client.closing = True
        self.room.clients.discard(client)
        metrics.CONNECTIONS.dec()
        if await self.presence.remove(client.user):
            self._presence_changed(client.user, client.name, False)
        if not self.presence.local.get(client.user):
            await self.fanout.signal({"kind": "presence", "op": "leave", "user": client.user})

    def heard(self, change: tuple[dict[str, str], list[str]] | None) -> None:
        """The worker's presence heartbeat for this room: who left or joined on replicas that went quiet."""
        if change is not None:
            joined, left = change
            self.presence_joined.update(joined)
            self.presence_left.update(left)
            if joined or left:
                self.worker.presence_dirty.add(self)

    def _presence_changed(self, user: str, name: str, joined: bool) -> None:
        if joined:
            self.presence_left.discard(user)
            self.presence_joined[user] = name
        else:
            self.presence_joined.pop(user, None)
            self.presence_left.add(user)
        self.worker.presence_dirty.add(self)  # flushed by the worker within PRESENCE_COALESCE

    async def flush_presence(self) -> None:
        """One join frame and one leave frame for every user who moved since the last flush."""
        joined, self.presence_joined = self.presence_joined, {}
        left, self.presence_left = self.presence_left, set()
        if self.presence.count() <= self.settings.chat_presence_events_max_users:
            # (a large room: clients ask for the list instead of hearing every join)
            if joined:
                await self.room.broadcast(p.dumps({"type": "presence", "op": "join", "users": [
                    {"id": u, "name": n} for u, n in joined.items()]}))
            if left:
                await self.room.broadcast(p.dumps({"type": "presence", "op": "leave", "users": [
                    {"id": u} for u in sorted(left)]}))

    # -- from the other replicas -------------------------------------------------
    def _remote_events(self, items: list[Encoded]) -> None:
        """Committed events from another replica's fan-out. A seq far beyond what this replica knows to be
        committed is no event of this room (and would stop delivery while it waits for the seqs before it)."""
        bound = max(self.room.delivered, self.known_last) + inbound.SEQ_WINDOW
        if any(seq > bound for seq, _, _ in items):
            bus.reject(inbound.EVENTS, "seq_out_of_window", seq=max(seq for seq, _, _ in items), bound=bound)
            return
        self.store.wrote()  # committed before it was published: reads that may lag must see it
        self.room.feed(items)

    def _on_signal(self, signal: inbound.PresenceSignal | inbound.FrameSignal | inbound.ModerationSignal) -> None:
        if isinstance(signal, inbound.PresenceSignal):
            if self.presence.remote_change(signal.w, signal.op, signal.user, signal.name):
                self._presence_changed(signal.user, signal.name, signal.op == "join")
        elif isinstance(signal, inbound.FrameSignal):
            frame = listen.relayed_reaction(signal.frame) if listen.is_reaction_at(signal.frame) else \
                inbound.inner_frame(inbound.RelayedFrame, signal.frame)
            if frame is not None:
                asyncio.get_running_loop().create_task(self.room.broadcast(p.dumps(frame)))
        else:
            task = asyncio.get_running_loop().create_task(self._remote_moderation(signal))
            self.tasks.append(task)
            task.add_done_callback(self.tasks.remove)

    async def _remote_moderation(self, signal: inbound.ModerationSignal) -> None:
        """A moderation made on another replica. Bans and mutes are stored before they are announced, so one
        that PostgreSQL does not hold (or still holds, for a lift) is not applied: a peer's word is not enough
        to close a user's sockets. Kicks are stored nowhere: they are taken from the (validated) signal."""
        frame = inbound.inner_frame(inbound.ModerationFrame, signal.frame)
        if frame is None:
            return
        if (frame["action"], frame["user"]) != (signal.action, signal.user):
            bus.reject(inbound.SIGNALS, "invalid_frame")
            return
        until = signal.until
        if signal.action != "kick":
            kind = signal.action.removeprefix("un")
            try:
                in_force = await self.store.sanctions_of(signal.user)
            except Exception:
                bus.reject(inbound.SIGNALS, "unconfirmed")  # the next sanctions reload decides
                return
            if (kind in in_force) != (signal.action == kind):
                bus.reject(inbound.SIGNALS, "unconfirmed", action=signal.action)
                return
            until = in_force.get(kind)
            frame.pop("until", None)
            if until is not None:
                frame["until"] = int(until * 1000)
        self._apply_moderation(signal.action, signal.user, until)
        await self.room.broadcast(p.dumps(frame))

    # -- from the API --------------------------------------------------------------
    def session_revoked(self, revoked: inbound.Revoked) -> None:
        """A session ended (logout, a reused refresh token, an account disabled): its sockets close (every
        socket of the user when no session is named). The worker keeps the revocation (its tokens open no new
        socket) and logs it once."""
        for c in list(self.room.clients):
            if c.user == revoked.user and (revoked.session is None or c.session == revoked.session):
                self.close_socket(c, p.CLOSE_SESSION_REVOKED, "session revoked")

    def membership_changed(self, change: inbound.Membership) -> None:
        """The API changed a user's role on this room. It is newer than any token already issued, so it wins
        over their `res` claim: open sockets take the new role, and in a private room the sockets of a user left
        without one close (the spec's member list and the admin role still count)."""
        self.revocations.set_role(change.user, change.role)
        for c in list(self.room.clients):
            if c.user != change.user or c.role == "admin":
                continue
            role = change.role or access.default_role(c.user, self.spec)
            if role is None:
                self.close_socket(c, p.CLOSE_ROLE_REMOVED, "no longer a member")
            else:
                c.role = role
        log.info("room role changed", extra={"user": change.user, "role": change.role})

    async def emit(self, frame: dict[str, Any], *, exclude: Client | None = None) -> None:
        """An ephemeral frame to this room on every replica."""
        data = p.dumps(frame)
        await self.room.broadcast(data, exclude=exclude)
        await self.fanout.signal({"kind": "frame", "frame": data})

