"""One WebSocket of the room, from welcome to close: the read loop and what each frame does.

A `Session` joins its client to the room (presence, live events), sends the welcome and the
replay, then reads frames: a flood guard per socket, validation (protocol.py), and then either
a sequenced operation (send, edit, delete, react: checked against sanctions, rate limits and the
room's moderation rules, then group-committed and acked) or an ephemeral one (typing, receipts,
presence, history, resume, moderation, ping). Errors go back as error frames with stable codes;
the socket stays open.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

from aiohttp import WSMsgType
from opentelemetry import trace

from veza_core.tracing import new_trace

from . import access, metrics
from . import protocol as p
from .room import Client
from .service import ChatService
from .spec import RoomSpec
from .store import Appended, Op, StoreUnavailable

log = logging.getLogger("veza.chat")
tracer = trace.get_tracer("veza.chat")

MENTION = re.compile(r"(?<!\w)@\w+")
MAX_INFLIGHT_PER_SOCKET = 256
TYPING_EVERY = 2.0
REACT_AT_RATE, REACT_AT_BURST = 2.0, 10.0  # per user: each one is a frame to every member
FRAMES_IN = {kind: metrics.FRAMES_IN.labels(kind) for kind in p.CLIENT_TYPES}  # labelled once, counted per frame


class Session:
    def __init__(self, service: ChatService, client: Client) -> None:
        self.service = service
        self.client = client

    async def run(self, after: int | None) -> None:
        """Welcome, replay from `after` (or from now), then read until the socket closes."""
        service, client = self.service, self.client
        try:
            await service.join(client)
            start = service.room.delivered
            await client.send(p.dumps(self.welcome(start)))
            await self.replay(after if after is not None else start, marker=after is not None)
            await self.read_loop()
        finally:
            await service.leave(client)

    def welcome(self, last_seq: int) -> dict[str, Any]:
        service, client, limits = self.service, self.client, self.service.spec.limits
        frame: dict[str, Any] = {
            "type": "welcome", "protocol": p.PROTOCOL, "session": service.worker_id, "last_seq": last_seq,
            "room": {"name": service.room_name, "visibility": service.spec.visibility,
                     "limits": {"max_message_bytes": limits.max_message_bytes,
                                "messages_per_minute": limits.messages_per_minute,
                                "max_members": limits.max_members},
                     "slow_mode_seconds": service.spec.moderation.slow_mode_seconds},
            "user": {"id": client.user, "name": client.name, "role": client.role}}
        if client.batch:  # asked for at the handshake: the bounds of the `events` frames it will get
            frame["batch"] = p.batch_terms()
        if service.spec.channel_ref is not None:
            frame["room"]["channel"] = service.spec.channel_ref.name
            if service.now_playing is not None:  # the bound channel's newest track change, as stored
                frame["now_playing"] = service.now_playing
        return frame

    async def replay(self, after: int, *, marker: bool) -> None:
        client = self.client
        client.buffer = client.buffer if client.buffer is not None else []
        await self.service.room.replay(client, after, marker=(
            (lambda pos, truncated: p.dumps({"type": "resumed", "after": after, "last_seq": pos,
                                             "truncated": truncated})) if marker else None))

    async def read_loop(self) -> None:
        service, client = self.service, self.client
        ws = client.ws
        tokens, stamp, strikes = service.frame_burst, time.monotonic(), 0
        slots = asyncio.Semaphore(MAX_INFLIGHT_PER_SOCKET)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                now = time.monotonic()
                tokens = min(service.frame_burst, tokens + (now - stamp) * service.frame_rate)
                stamp = now
                if tokens < 1:
                    strikes += 1
                    if strikes == 1 or strikes % 50 == 0:
                        await self.error(p.FLOOD, "too many frames; slow down")
                    if strikes > 200:
                        await ws.close(code=p.CLOSE_POLICY, message=b"flood")
                        break
                    continue
                tokens -= 1
                try:
                    frame = p.parse_client_frame(msg.data)
                except p.FrameError as exc:
                    await self.error(exc.code, exc.message)
                    continue
                kind = frame["type"]
                FRAMES_IN[kind].inc()
                if kind in ("send", "edit", "delete", "react"):
                    await slots.acquire()
                    task = asyncio.get_running_loop().create_task(self.sequenced(frame, now))
                    client.inflight.add(task)
                    task.add_done_callback(client.inflight.discard)
                    task.add_done_callback(lambda _: slots.release())
                else:
                    try:
                        await self.ephemeral(frame)
                    except (StoreUnavailable, OSError) as exc:
                        await self.error(p.STORE_UNAVAILABLE, f"the database is unavailable: {exc}",
                                         ref=frame.get("ref"))
            elif msg.type == WSMsgType.BINARY:
                await self.error(p.BINARY_FRAME, "binary frames are not part of the protocol")
            elif msg.type == WSMsgType.ERROR:
                break

    async def error(self, code: str, message: str, **extra: Any) -> None:
        metrics.ERRORS.labels(code).inc()
        await self.client.send(p.error_frame(code, message, **extra))

    # -- sequenced operations ---------------------------------------------
    async def sequenced(self, frame: dict[str, Any], received: float) -> None:
        # Each operation is its own trace (linked to the session's): send -> commit -> publish -> deliver.
        with new_trace(tracer, f"chat {frame['type']}", kind=trace.SpanKind.SERVER,
                       attributes={"veza.room": self.service.room_name, "veza.cid": frame["cid"]}):
            await self._sequenced(frame, received)

    async def _sequenced(self, frame: dict[str, Any], received: float) -> None:
        # Frames are validated concurrently (a rate limit, a target's lookup) but queued for commit in the order
        # they came: a socket's operations take their seqs in that order.
        client = self.client
        previous, mine = client.last_op, asyncio.get_running_loop().create_future()
        client.last_op = mine
        try:
            result = await self._queued(frame, received, previous)
        finally:
            if previous is None or previous.done():
                mine.set_result(None)
            else:  # refused before its predecessor was queued: its successor still waits for that one
                previous.add_done_callback(lambda _: mine.set_result(None))
        if result is None:
            return
        try:
            await result
        except StoreUnavailable as exc:
            await self.error(p.STORE_UNAVAILABLE, f"not stored, retry with the same cid: {exc}", cid=frame["cid"])

    async def _queued(self, frame: dict[str, Any], received: float,
                      previous: asyncio.Future[None] | None) -> asyncio.Future[Appended] | None:
        """The frame's operation in the commit queue, after its predecessor's; None when refused."""
        cid = frame["cid"]
        try:
            op = await self.validate_op(frame)
        except p.FrameError as exc:
            await self.error(exc.code, exc.message, cid=cid)
            return None
        except StoreUnavailable as exc:
            await self.error(p.STORE_UNAVAILABLE, f"the database is unavailable: {exc}", cid=cid)
            return None
        if op is None:
            return None

        def ack(result: Appended) -> None:  # called by the committer as the commit returns (no wake-up per send)
            self.client.send_soon(p.dumps({"type": "ack", "cid": cid, "seq": result.seq, "id": result.id,
                                           "duplicate": result.duplicate}))
            metrics.ACK_SECONDS.observe(time.monotonic() - received)

        if previous is not None and not previous.done():
            await asyncio.wait((previous,))  # not `await previous`: a cancelled wait must not cancel it
        return self.service.committer.enqueue(op, ack)

    async def validate_op(self, frame: dict[str, Any]) -> Op | None:
        """The operation to commit; FrameError when refused, None when a limit answered already."""
        service, client = self.service, self.client
        kind = frame["type"]
        if service.draining:
            raise p.FrameError(p.SHUTTING_DOWN, "the worker is restarting; resend on the next connection")
        if service.sanctioned(client.user, "ban"):
            # A ban learned from the database (REST, or another replica while NATS is down) may
            # reach this socket after its close was decided: nothing more is accepted meanwhile.
            service.close_sockets_of(client.user, p.CLOSE_BANNED, "ban")
            raise p.FrameError(p.BANNED, "you are banned from this room")
        if service.sanctioned(client.user, "mute") and not (kind == "delete"):
            raise p.FrameError(p.MUTED, "you are muted in this room")
        text = frame.get("text")
        if text is not None:
            check_text(service.spec, text)
        decision = await service.limiter.hit(f"user:{client.user}", rate=service.msg_rate, burst=service.msg_burst)
        if not decision.allowed:
            await self.error(p.RATE_LIMITED, "too many messages", cid=frame["cid"],
                             retry_after=round(decision.retry_after, 3))
            return None
        slow = service.spec.moderation.slow_mode_seconds
        if kind == "send" and slow > 0 and not client.is_moderator:
            d = await service.limiter.hit(f"slow:{client.user}", rate=1.0 / slow, burst=1)
            if not d.allowed:
                await self.error(p.SLOW_MODE, "slow mode is on", cid=frame["cid"],
                                 retry_after=round(d.retry_after, 3))
                return None
        if kind == "send":
            return Op("message", client.user, client.name, frame["cid"], body=text, reply_to=frame.get("reply_to"))
        target = await service.store.event(frame["seq"])
        if target is None or target["kind"] != "message" or target.get("deleted"):
            raise p.FrameError(p.NOT_FOUND, "no such message")
        # Moderators remove what others wrote; words are changed only by whoever wrote them.
        if kind == "edit" and target["author"]["id"] != client.user:
            raise p.FrameError(p.FORBIDDEN, "only the author may edit a message")
        if kind == "delete" and target["author"]["id"] != client.user and not client.is_moderator:
            raise p.FrameError(p.FORBIDDEN, "only the author or a moderator may do that")
        if kind == "edit":
            return Op("edit", client.user, client.name, frame["cid"], body=text, target=frame["seq"])
        if kind == "delete":
            return Op("delete", client.user, client.name, frame["cid"], target=frame["seq"])
        op_kind = "reaction_add" if frame.get("op", "add") == "add" else "reaction_remove"
        return Op(op_kind, client.user, client.name, frame["cid"], target=frame["seq"], emoji=frame["emoji"])

    # -- ephemeral frames -------------------------------------------------
    async def ephemeral(self, frame: dict[str, Any]) -> None:
        service, client = self.service, self.client
        kind = frame["type"]
        if kind == "ping":
            await client.send(p.dumps({"type": "pong", **({"ref": frame["ref"]} if "ref" in frame else {})}))
        elif kind == "typing":
            # Relayed at most once per TYPING_EVERY seconds while unchanged: typing is cheap to
            # send and costs a frame per member to relay.
            active, now = frame.get("active", True), time.monotonic()
            if client.last_typing[0] != active or now - client.last_typing[1] >= TYPING_EVERY:
                client.last_typing = (active, now)
                await service.emit({"type": "typing", "user": {"id": client.user, "name": client.name},
                                    "active": active}, exclude=client)
        elif kind == "read":
            if frame["seq"] <= client.last_read:
                return  # nothing new to record or announce
            # Clamped by the store to the room's last committed seq, not to what this replica
            # has delivered: a reader may know a seq from history or another replica first.
            seq = await service.store.mark_read(client.user, frame["seq"])
            client.last_read = max(client.last_read, seq)
            await service.emit({"type": "read", "user": {"id": client.user, "name": client.name}, "seq": seq})
        elif kind == "presence":
            users = service.presence.users()
            await client.send(p.dumps({"type": "presence", "op": "list", **(
                {"ref": frame["ref"]} if "ref" in frame else {}),
                "users": [{"id": u, "name": n} for u, n in sorted(users.items())]}))
        elif kind == "history":
            events, more = await service.history_page(frame.get("before"), frame.get("after"),
                                                      frame.get("limit", 50))
            await client.send(p.dumps({"type": "history", **({"ref": frame["ref"]} if "ref" in frame else {}),
                                       "events": events, "has_more": more}))
        elif kind == "resume":
            client.buffer = []
            await self.replay(frame["after"], marker=True)
        elif kind == "react_at":
            await self.react_at(frame)
        elif kind == "moderate":
            if not client.is_moderator:
                await self.error(p.FORBIDDEN, "moderators only")
                return
            # As over REST: nobody acts on someone of equal or higher rank (a moderator on the owner,
            # anyone on an admin).
            if access.rank(service.rank_of(frame["user"])) >= access.rank(client.role):
                await self.error(p.FORBIDDEN, "you cannot moderate someone of your rank or above")
                return
            log.info("moderation", extra={"room": service.room_name, "action": frame["action"],
                                          "user": frame["user"], "by": client.user, "by_role": client.role,
                                          "seconds": frame.get("seconds"), "reason": frame.get("reason")})
            await service.moderate(frame["action"], frame["user"], by=client.user, seconds=frame.get("seconds"),
                                   reason=frame.get("reason"))


    async def react_at(self, frame: dict[str, Any]) -> None:
        """A reaction at a stream position: relayed (not stored) to every socket of the room, the sender's too;
        each client shows it when its own playback reaches the position."""
        service, client = self.service, self.client
        if service.sanctioned(client.user, "mute"):
            await self.error(p.MUTED, "you are muted in this room")
            return
        decision = await service.limiter.hit(f"react_at:{client.user}", rate=REACT_AT_RATE, burst=REACT_AT_BURST)
        if not decision.allowed:
            await self.error(p.RATE_LIMITED, "too many reactions", retry_after=round(decision.retry_after, 3))
            return
        await service.emit({"type": "reaction_at", "user": {"id": client.user, "name": client.name},
                            "emoji": frame["emoji"], "position": float(frame["position"])})


def check_text(spec: RoomSpec, text: str) -> None:
    """The room's rules for a message text: size, blocked words, mentions; FrameError when broken."""
    limit = spec.limits.max_message_bytes
    if len(text.encode()) > limit:
        raise p.FrameError(p.MESSAGE_TOO_LARGE, f"messages are limited to {limit} bytes")
    mod = spec.moderation
    if mod.blocked_words:
        lowered = text.lower()
        if any(re.search(rf"\b{re.escape(w.lower())}\b", lowered) for w in mod.blocked_words):
            raise p.FrameError(p.BLOCKED_WORD, "the message contains a blocked word")
    if mod.max_mentions is not None and len(MENTION.findall(text)) > mod.max_mentions:
        raise p.FrameError(p.TOO_MANY_MENTIONS, f"at most {mod.max_mentions} mentions per message")
