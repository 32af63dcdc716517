"""The chat worker: one aiohttp app serving one ChatRoom (WebSocket, REST history, health, metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import time
from typing import Any

import redis.asyncio as aioredis
from aiohttp import WSMsgType, web
from redis.exceptions import RedisError

from veza_core import web as core_web
from veza_core.auth import AUDIENCE_CHAT, Principal, TokenError, TokenVerifier, token_from_request
from veza_core.breaker import CircuitBreaker
from veza_core.config import Settings
from veza_core.db import migrate
from veza_core.keys import KeySet
from veza_core.ratelimit import RateLimiter

from . import metrics
from . import protocol as p
from .cache import RecentCache
from .fanout import Fanout
from .limits import BatchedLimiter
from .presence import HEARTBEAT, Presence
from .room import Client, Room, encode
from .spec import RoomSpec
from .store import GroupCommitter, Op, Store, StoreUnavailable

log = logging.getLogger("veza.chat")

MENTION = re.compile(r"(?<!\w)@\w+")
PRESENCE_COALESCE = 0.5  # join/leave frames are batched: one frame per window, however many users moved
MAX_INFLIGHT_PER_SOCKET = 256
TYPING_EVERY = 2.0


class ChatService:
    def __init__(self, settings: Settings, *, run_migrations: bool = True) -> None:
        if not settings.resource_name:
            raise ValueError("VEZA_RESOURCE_NAME (the ChatRoom's name) is required")
        if not settings.database_url:
            raise ValueError("VEZA_DATABASE_URL is required")
        self.settings = settings
        self.room_name = settings.resource_name
        self.spec = RoomSpec.model_validate(settings.resource_spec or {})
        self.run_migrations = run_migrations
        self.worker_id = secrets.token_hex(6)
        self.keys = KeySet(settings.jwt_keys_dir)
        self.verifier = TokenVerifier(self.keys, issuer=settings.jwt_issuer, audience=AUDIENCE_CHAT,
                                      algorithms=settings.jwt_algorithms)
        prefix = f"veza:{settings.platform}:chat:{self.room_name}"
        self.redis: aioredis.Redis | None = None
        if settings.redis_url:
            pool = aioredis.BlockingConnectionPool.from_url(
                settings.redis_url, max_connections=32, timeout=1.0, socket_timeout=0.5, socket_connect_timeout=0.5)
            self.redis = aioredis.Redis(connection_pool=pool)
        # One breaker for every Redis use: once Redis is known down, all of them go local at once.
        breaker = CircuitBreaker("chat-redis", errors=(RedisError, OSError))
        self.limiter = BatchedLimiter(RateLimiter(self.redis, prefix=f"{prefix}:rl", breaker=breaker))
        self.cache = RecentCache(self.redis, f"{prefix}:recent", breaker) if self.redis is not None else None
        self.presence = Presence(self.redis, prefix, self.worker_id, breaker,
                                 members_key=f"veza:{settings.platform}:room:{self.room_name}:members")
        self.store = Store(settings.database_url, self.room_name)
        self.room = Room(self.room_name, self._fetch_after, self.cache.range if self.cache else None)
        self.committer = GroupCommitter(self.store, self._committed)
        self.fanout = Fanout(settings.nats_url, platform=settings.platform, room=self.room_name,
                             worker_id=self.worker_id, on_events=self.room.feed, on_signal=self._on_signal)
        self.sanctions: dict[tuple[str, str], float | None] = {}  # (user, ban|mute) -> until (epoch) or None
        self.booted = asyncio.Event()
        self.draining = False
        self.tasks: list[asyncio.Task[Any]] = []
        self.presence_joined: dict[str, str] = {}
        self.presence_left: set[str] = set()
        self.msg_rate = self.spec.limits.messages_per_minute / 60.0
        self.msg_burst = max(1.0, self.spec.limits.messages_per_minute / 6.0)
        self.frame_rate = max(20.0, 3 * self.msg_rate)
        self.frame_burst = 3 * self.frame_rate
        self.presence_events_max_users = int(os.environ.get("VEZA_CHAT_PRESENCE_EVENTS_MAX_USERS", "200"))
        self.retention_interval = float(os.environ.get("VEZA_CHAT_RETENTION_INTERVAL_SECONDS", "60"))

    # -- lifecycle --------------------------------------------------------
    async def start(self) -> None:
        self.fanout.start()
        self.tasks.append(asyncio.create_task(self._boot(), name="chat-boot"))

    async def _boot(self) -> None:
        assert self.settings.database_url is not None
        while True:
            try:
                if self.run_migrations:
                    await migrate(self.settings.database_url)
                await self.store.open(self.spec.title, self.spec.visibility)
                last = await self.store.last_seq()
                await self._load_sanctions()
                break
            except Exception as exc:
                log.warning("database not reachable yet, retrying", extra={"error": repr(exc)})
                await self.store.close()
                self.store.pool = None
                await asyncio.sleep(1.0)
        self.room.start(last)
        self.committer.start()
        self.tasks += [asyncio.create_task(self._poll(), name="chat-poll"),
                       asyncio.create_task(self._heartbeat(), name="chat-presence"),
                       asyncio.create_task(self._presence_flush(), name="chat-presence-flush")]
        self.booted.set()
        log.info("chat room ready", extra={"room": self.room_name, "last_seq": last, "worker": self.worker_id})

    async def shutdown(self) -> None:
        """SIGTERM: refuse new sends, finish the in-flight ones (ack them), close sockets with 1012."""
        self.draining = True
        grace = self.settings.shutdown_grace_seconds
        if self.booted.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.committer.drain(), grace / 2)
        inflight = [t for c in self.room.clients for t in c.inflight]
        if inflight:
            await asyncio.wait(inflight, timeout=grace / 4)
        clients = list(self.room.clients)
        for c in clients:
            c.flush()  # acks queued by the last in-flight sends
            c.closing = True
        await asyncio.gather(*(c.ws.close(code=p.CLOSE_SERVICE_RESTART, message=b"service restart")
                               for c in clients), return_exceptions=True)
        await self.presence.withdraw()
        await self.fanout.close()

    async def cleanup(self) -> None:
        for task in self.tasks:
            task.cancel()
        await self.room.stop()
        if self.booted.is_set():
            await self.committer.stop()
        await self.store.close()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()

    async def _poll(self) -> None:
        """Safety net under fan-out: whatever PostgreSQL committed reaches this replica's sockets."""
        seen_last = 0
        ticks = 0
        next_retention = time.monotonic() + min(5.0, self.retention_interval)
        while True:
            await asyncio.sleep(1.0 if self.fanout.connected else 0.25)
            ticks += 1
            try:
                last = await self.store.last_seq()
                # With NATS up, only chase what stayed missing for a whole tick (fan-out is in flight otherwise).
                target = min(last, seen_last) if self.fanout.connected else last
                seen_last = last
                if target > self.room.delivered:
                    await self.room.catch_up(target)
                if ticks % 10 == 0:
                    await self._load_sanctions()
                retention = self.spec.retention
                if (retention.days or retention.max_messages) and time.monotonic() >= next_retention:
                    next_retention = time.monotonic() + self.retention_interval
                    removed = await self.store.apply_retention(retention.days, retention.max_messages)
                    if removed:
                        log.info("retention applied", extra={"deleted": removed})
                    first = await self.store.first_seq()
                    floor = (first - 1) if first is not None else self.room.delivered
                    self.room.trim(floor)
                    if self.cache is not None:
                        await self.cache.trim(floor)
            except Exception as exc:
                log.warning("poll failed", extra={"error": repr(exc)})

    async def _load_sanctions(self) -> None:
        self.sanctions = {(u, k): until for u, k, until in await self.store.sanctions()}

    def sanctioned(self, user: str, kind: str) -> bool:
        key = (user, kind)
        if key not in self.sanctions:
            return False
        until = self.sanctions[key]
        if until is not None and until <= time.time():
            del self.sanctions[key]
            return False
        return True

    async def _fetch_after(self, after: int, upto: int, limit: int) -> list[dict[str, Any]]:
        return await self.store.events_after(after, limit, upto)

    def _committed(self, events: list[dict[str, Any]]) -> None:
        metrics.EVENTS_COMMITTED.inc(len(events))
        items = [encode(ev) for ev in events]
        self.room.feed(items)
        self.fanout.publish_events(items)
        if self.cache is not None:
            task = asyncio.get_running_loop().create_task(self.cache.add(items))
            task.add_done_callback(lambda t: t.exception())

    # -- presence -----------------------------------------------------------
    async def _heartbeat(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                change = await self.presence.heartbeat()
                if change is not None:
                    joined, left = change
                    self.presence_joined.update(joined)
                    self.presence_left.update(left)
            await asyncio.sleep(HEARTBEAT)

    def _presence_changed(self, user: str, name: str, joined: bool) -> None:
        if joined:
            self.presence_left.discard(user)
            self.presence_joined[user] = name
        else:
            self.presence_joined.pop(user, None)
            self.presence_left.add(user)

    async def _presence_flush(self) -> None:
        while True:
            await asyncio.sleep(PRESENCE_COALESCE)
            joined, self.presence_joined = self.presence_joined, {}
            left, self.presence_left = self.presence_left, set()
            if self.presence.count() > self.presence_events_max_users:
                continue  # a large room: clients ask for the list instead of hearing every join
            if joined:
                await self.room.broadcast(p.dumps({"type": "presence", "op": "join", "users": [
                    {"id": u, "name": n} for u, n in joined.items()]}))
            if left:
                await self.room.broadcast(p.dumps({"type": "presence", "op": "leave", "users": [
                    {"id": u} for u in sorted(left)]}))

    # -- signals from other replicas ------------------------------------------
    def _on_signal(self, data: dict[str, Any]) -> None:
        kind = data.get("kind")
        if kind == "presence":
            if self.presence.remote_change(data["w"], data["op"], data["user"], data.get("name", "")):
                self._presence_changed(data["user"], data.get("name", ""), data["op"] == "join")
        elif kind == "frame":
            asyncio.get_running_loop().create_task(self.room.broadcast(data["frame"]))
        elif kind == "moderation":
            self._apply_moderation(data["action"], data["user"], data.get("until"))
            asyncio.get_running_loop().create_task(self.room.broadcast(data["frame"]))

    def _apply_moderation(self, action: str, user: str, until: float | None) -> None:
        if action in ("mute", "ban"):
            self.sanctions[(user, action)] = until
        elif action in ("unmute", "unban"):
            self.sanctions.pop((user, action[2:]), None)
        if action in ("kick", "ban"):
            code = p.CLOSE_BANNED if action == "ban" else p.CLOSE_KICKED
            for c in list(self.room.clients):
                if c.user == user and not c.closing:
                    c.closing = True
                    self.room.clients.discard(c)
                    asyncio.get_running_loop().create_task(c.ws.close(code=code, message=action.encode()))

    async def _emit(self, frame: dict[str, Any], *, exclude: Client | None = None) -> None:
        """An ephemeral frame to this room on every replica."""
        data = p.dumps(frame)
        await self.room.broadcast(data, exclude=exclude)
        await self.fanout.signal({"kind": "frame", "frame": data})

    # -- access -------------------------------------------------------------
    def authorize(self, request: web.Request) -> tuple[Principal, str]:
        """(principal, room role) or an HTTP error with a stable code."""
        token = token_from_request(request)
        if token is None:
            raise _http(401, "token_missing", "a bearer token is required")
        try:
            principal = self.verifier.verify(token)
        except TokenError as exc:
            raise _http(401, exc.code, exc.message) from None
        scoped = principal.claims.get("rooms", principal.claims.get("room"))
        if scoped is not None:
            rooms = [scoped] if isinstance(scoped, str) else scoped
            if not isinstance(rooms, list) or self.room_name not in rooms:
                raise _http(403, "token_room", "the token is for another room")
        if self.sanctioned(principal.subject, "ban"):
            raise _http(403, p.BANNED, "you are banned from this room")
        role = ("admin" if principal.is_admin else None) or principal.resource_role("room", self.room_name) \
            or self.spec.member_role(principal.subject)
        if role is None:
            if self.spec.visibility == "private":
                raise _http(403, p.NOT_MEMBER, "this room is private")
            role = "member"
        return principal, role

    # -- HTTP handlers ------------------------------------------------------
    def _check_room(self, request: web.Request) -> None:
        if request.match_info["room"] != self.room_name:
            raise _http(404, "room_not_found", "this worker does not serve that room")
        if self.draining:
            raise _http(503, p.SHUTTING_DOWN, "the worker is restarting; reconnect")
        if not self.booted.is_set():
            raise _http(503, "not_ready", "the worker is starting")

    async def history(self, request: web.Request) -> web.Response:
        self._check_room(request)
        self.authorize(request)
        try:
            before = _opt_int(request.query.get("before"), 1)
            after = _opt_int(request.query.get("after"), 0)
            limit = _opt_int(request.query.get("limit"), 1, p.MAX_HISTORY) or 50
        except ValueError as exc:
            raise _http(400, "bad_request", str(exc)) from None
        try:
            events, more = await self.history_page(before, after, limit)
            last = await self.store.last_seq()
        except (StoreUnavailable, OSError) as exc:
            raise _http(503, p.STORE_UNAVAILABLE, f"history is unavailable: {exc}") from None
        return web.json_response({"room": self.room_name, "last_seq": last, "events": events, "has_more": more})

    async def reads(self, request: web.Request) -> web.Response:
        """Read receipts: the last read seq of every user who sent one."""
        self._check_room(request)
        self.authorize(request)
        try:
            reads = await self.store.reads()
        except (StoreUnavailable, OSError) as exc:
            raise _http(503, p.STORE_UNAVAILABLE, f"receipts are unavailable: {exc}") from None
        return web.json_response({"room": self.room_name, "reads": reads})

    async def history_page(self, before: int | None, after: int | None,
                           limit: int) -> tuple[list[dict[str, Any]], bool]:
        if after is not None:
            events = await self.store.events_after(after, limit + 1, (before - 1) if before else None)
            more = len(events) > limit
            events = events[:limit]
        else:
            events = await self.store.events_before(before or 2**62, limit + 1)
            more = len(events) > limit
            events = events[-limit:]
        return await self.store.with_reactions(events), more

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        self._check_room(request)
        principal, role = self.authorize(request)
        try:
            after = _opt_int(request.query.get("after"), 0)
        except ValueError as exc:
            raise _http(400, "bad_request", str(exc)) from None
        if not self.presence.present(principal.subject) and self.presence.count() >= self.spec.limits.max_members:
            metrics.ERRORS.labels(p.ROOM_FULL).inc()
            raise _http(403, p.ROOM_FULL, "the room is full")
        ws = web.WebSocketResponse(protocols=(p.PROTOCOL,), heartbeat=30.0, compress=False, autoping=True,
                                   max_msg_size=self.spec.limits.max_message_bytes * 6 + 4096)
        await ws.prepare(request)
        client = Client(ws, request, principal.subject, principal.name, role)
        self.room.clients.add(client)
        metrics.CONNECTIONS.inc()
        try:
            if await self.presence.add(client.user, client.name):
                self._presence_changed(client.user, client.name, True)
            await self.fanout.signal({"kind": "presence", "op": "join", "user": client.user, "name": client.name})
            start = self.room.delivered
            await client.send(p.dumps({
                "type": "welcome", "protocol": p.PROTOCOL, "session": self.worker_id, "last_seq": start,
                "room": {"name": self.room_name, "visibility": self.spec.visibility,
                         "limits": {"max_message_bytes": self.spec.limits.max_message_bytes,
                                    "messages_per_minute": self.spec.limits.messages_per_minute,
                                    "max_members": self.spec.limits.max_members},
                         "slow_mode_seconds": self.spec.moderation.slow_mode_seconds},
                "user": {"id": client.user, "name": client.name, "role": role}}))
            await self._replay(client, after if after is not None else start, marker=after is not None)
            await self._read_loop(client)
        finally:
            client.closing = True
            self.room.clients.discard(client)
            metrics.CONNECTIONS.dec()
            if await self.presence.remove(client.user):
                self._presence_changed(client.user, client.name, False)
            if not self.presence.local.get(client.user):
                await self.fanout.signal({"kind": "presence", "op": "leave", "user": client.user})
        return ws

    async def _replay(self, client: Client, after: int, *, marker: bool) -> None:
        client.buffer = client.buffer if client.buffer is not None else []
        await self.room.replay(client, after, marker=(
            (lambda pos, truncated: p.dumps({"type": "resumed", "after": after, "last_seq": pos,
                                             "truncated": truncated})) if marker else None))

    async def _read_loop(self, client: Client) -> None:
        ws = client.ws
        tokens, stamp, strikes = self.frame_burst, time.monotonic(), 0
        slots = asyncio.Semaphore(MAX_INFLIGHT_PER_SOCKET)
        frames_in = FRAMES_IN
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                now = time.monotonic()
                tokens = min(self.frame_burst, tokens + (now - stamp) * self.frame_rate)
                stamp = now
                if tokens < 1:
                    strikes += 1
                    if strikes == 1 or strikes % 50 == 0:
                        await self._error(client, p.FLOOD, "too many frames; slow down")
                    if strikes > 200:
                        await ws.close(code=p.CLOSE_POLICY, message=b"flood")
                        break
                    continue
                tokens -= 1
                try:
                    frame = p.parse_client_frame(msg.data)
                except p.FrameError as exc:
                    await self._error(client, exc.code, exc.message)
                    continue
                kind = frame["type"]
                frames_in[kind].inc()
                if kind in ("send", "edit", "delete", "react"):
                    await slots.acquire()
                    task = asyncio.get_running_loop().create_task(self._sequenced(client, frame, now))
                    client.inflight.add(task)
                    task.add_done_callback(client.inflight.discard)
                    task.add_done_callback(lambda _: slots.release())
                else:
                    try:
                        await self._ephemeral(client, frame)
                    except (StoreUnavailable, OSError) as exc:
                        await self._error(client, p.STORE_UNAVAILABLE, f"the database is unavailable: {exc}",
                                          ref=frame.get("ref"))
            elif msg.type == WSMsgType.BINARY:
                await self._error(client, p.BINARY_FRAME, "binary frames are not part of the protocol")
            elif msg.type == WSMsgType.ERROR:
                break

    async def _error(self, client: Client, code: str, message: str, **extra: Any) -> None:
        metrics.ERRORS.labels(code).inc()
        await client.send(p.error_frame(code, message, **extra))

    async def _sequenced(self, client: Client, frame: dict[str, Any], received: float) -> None:
        cid = frame["cid"]
        try:
            op = await self._validate_op(client, frame)
        except p.FrameError as exc:
            await self._error(client, exc.code, exc.message, cid=cid)
            return
        except StoreUnavailable as exc:
            await self._error(client, p.STORE_UNAVAILABLE, f"the database is unavailable: {exc}", cid=cid)
            return
        if op is None:
            return
        try:
            result = await self.committer.submit(op)
        except StoreUnavailable as exc:
            await self._error(client, p.STORE_UNAVAILABLE, f"not stored, retry with the same cid: {exc}", cid=cid)
            return
        client.send_soon(p.dumps({"type": "ack", "cid": cid, "seq": result.seq, "id": result.id,
                                  "duplicate": result.duplicate}))
        metrics.ACK_SECONDS.observe(time.monotonic() - received)

    async def _validate_op(self, client: Client, frame: dict[str, Any]) -> Op | None:
        kind = frame["type"]
        if self.draining:
            raise p.FrameError(p.SHUTTING_DOWN, "the worker is restarting; resend on the next connection")
        if self.sanctioned(client.user, "mute") and not (kind == "delete"):
            raise p.FrameError(p.MUTED, "you are muted in this room")
        text = frame.get("text")
        if text is not None:
            self._check_text(client, text)
        decision = await self.limiter.hit(f"user:{client.user}", rate=self.msg_rate, burst=self.msg_burst)
        if not decision.allowed:
            await self._error(client, p.RATE_LIMITED, "too many messages", cid=frame["cid"],
                              retry_after=round(decision.retry_after, 3))
            return None
        slow = self.spec.moderation.slow_mode_seconds
        if kind == "send" and slow > 0 and not client.is_moderator:
            d = await self.limiter.hit(f"slow:{client.user}", rate=1.0 / slow, burst=1)
            if not d.allowed:
                await self._error(client, p.SLOW_MODE, "slow mode is on", cid=frame["cid"],
                                  retry_after=round(d.retry_after, 3))
                return None
        if kind == "send":
            return Op("message", client.user, client.name, frame["cid"], body=text, reply_to=frame.get("reply_to"))
        target = await self.store.event(frame["seq"])
        if target is None or target["kind"] != "message" or target.get("deleted"):
            raise p.FrameError(p.NOT_FOUND, "no such message")
        if kind in ("edit", "delete") and target["author"]["id"] != client.user and not client.is_moderator:
            raise p.FrameError(p.FORBIDDEN, "only the author or a moderator may do that")
        if kind == "edit":
            return Op("edit", client.user, client.name, frame["cid"], body=text, target=frame["seq"])
        if kind == "delete":
            return Op("delete", client.user, client.name, frame["cid"], target=frame["seq"])
        op_kind = "reaction_add" if frame.get("op", "add") == "add" else "reaction_remove"
        return Op(op_kind, client.user, client.name, frame["cid"], target=frame["seq"], emoji=frame["emoji"])

    def _check_text(self, client: Client, text: str) -> None:
        if len(text.encode()) > self.spec.limits.max_message_bytes:
            raise p.FrameError(p.MESSAGE_TOO_LARGE,
                               f"messages are limited to {self.spec.limits.max_message_bytes} bytes")
        mod = self.spec.moderation
        if mod.blocked_words:
            lowered = text.lower()
            if any(re.search(rf"\b{re.escape(w.lower())}\b", lowered) for w in mod.blocked_words):
                raise p.FrameError(p.BLOCKED_WORD, "the message contains a blocked word")
        if mod.max_mentions is not None and len(MENTION.findall(text)) > mod.max_mentions:
            raise p.FrameError(p.TOO_MANY_MENTIONS, f"at most {mod.max_mentions} mentions per message")

    async def _ephemeral(self, client: Client, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "ping":
            await client.send(p.dumps({"type": "pong", **({"ref": frame["ref"]} if "ref" in frame else {})}))
        elif kind == "typing":
            # Relayed at most once per TYPING_EVERY seconds while unchanged: typing is cheap to
            # send and costs a frame per member to relay.
            active, now = frame.get("active", True), time.monotonic()
            if client.last_typing[0] != active or now - client.last_typing[1] >= TYPING_EVERY:
                client.last_typing = (active, now)
                await self._emit({"type": "typing", "user": {"id": client.user, "name": client.name},
                                  "active": active}, exclude=client)
        elif kind == "read":
            if frame["seq"] <= client.last_read:
                return  # nothing new to record or announce
            # Clamped by the store to the room's last committed seq, not to what this replica
            # has delivered: a reader may know a seq from history or another replica first.
            seq = await self.store.mark_read(client.user, frame["seq"])
            client.last_read = max(client.last_read, seq)
            await self._emit({"type": "read", "user": {"id": client.user, "name": client.name}, "seq": seq})
        elif kind == "presence":
            users = self.presence.users()
            await client.send(p.dumps({"type": "presence", "op": "list", **(
                {"ref": frame["ref"]} if "ref" in frame else {}),
                "users": [{"id": u, "name": n} for u, n in sorted(users.items())]}))
        elif kind == "history":
            events, more = await self.history_page(frame.get("before"), frame.get("after"), frame.get("limit", 50))
            await client.send(p.dumps({"type": "history", **({"ref": frame["ref"]} if "ref" in frame else {}),
                                       "events": events, "has_more": more}))
        elif kind == "resume":
            client.buffer = []
            await self._replay(client, frame["after"], marker=True)
        elif kind == "moderate":
            await self._moderate(client, frame)

    async def _moderate(self, client: Client, frame: dict[str, Any]) -> None:
        if not client.is_moderator:
            await self._error(client, p.FORBIDDEN, "moderators only")
            return
        action, user = frame["action"], frame["user"]
        until = time.time() + frame["seconds"] if frame.get("seconds") else None
        if action in ("mute", "ban"):
            await self.store.sanction(user, action, until, frame.get("reason"), client.user)
        elif action in ("unmute", "unban"):
            await self.store.lift(user, action[2:])
        out: dict[str, Any] = {"type": "moderation", "action": action, "user": user, "by": client.user}
        if until is not None:
            out["until"] = int(until * 1000)
        if frame.get("reason"):
            out["reason"] = frame["reason"]
        data = p.dumps(out)
        self._apply_moderation(action, user, until)
        await self.room.broadcast(data)
        await self.fanout.signal({"kind": "moderation", "action": action, "user": user, "until": until,
                                  "frame": data})


SERVICE = web.AppKey("chat_service", ChatService)
FRAMES_IN = {kind: metrics.FRAMES_IN.labels(kind) for kind in p.CLIENT_TYPES}


def _http(status: int, code: str, message: str) -> web.HTTPException:
    metrics.ERRORS.labels(code).inc()
    exc = web.HTTPException(text=p.dumps({"error": {"code": code, "message": message}}),
                            content_type="application/json")
    exc.set_status(status)
    return exc


def _opt_int(value: str | None, minimum: int, maximum: int = 2**62) -> int | None:
    if value is None or value == "":
        return None
    if not value.isdigit() or not (minimum <= int(value) <= maximum):
        raise ValueError(f"expected an integer in {minimum}..{maximum}, got {value[:20]!r}")
    return int(value)


def create_app(settings: Settings, *, run_migrations: bool = True) -> web.Application:
    app = core_web.create_app("chat")
    service = ChatService(settings, run_migrations=run_migrations)
    app[SERVICE] = service
    app.router.add_get("/chat/{room}/ws", service.websocket)
    app.router.add_get("/chat/{room}/history", service.history)
    app.router.add_get("/chat/{room}/reads", service.reads)

    async def booted() -> bool:
        return service.booted.is_set()

    core_web.add_readiness_check(app, "database", booted)

    async def on_startup(app: web.Application) -> None:
        await service.start()

    async def on_shutdown(app: web.Application) -> None:
        await service.shutdown()

    async def on_cleanup(app: web.Application) -> None:
        await service.cleanup()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app
