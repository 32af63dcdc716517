"""One room on one replica: its sockets, the in-order sequencer and the delivery loop.

Committed events reach the sequencer from three places: this replica's own commits,
NATS (other replicas' commits) and PostgreSQL (gap fills and catch-up polls). The
sequencer hands them to the delivery loop strictly in seq order, exactly once:
anything at or below ``delivered`` is dropped, anything ahead of a gap waits until
the gap is filled, from NATS if it arrives quickly, else from PostgreSQL.

Sockets that asked for batched delivery (docs/chat-protocol.md, "Batched delivery") get the same events a little
later, coalesced over a short window into `events` frames that are built once for all of them.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from aiohttp import web

from veza_core import bus

from . import inbound, metrics
from .protocol import (
    BATCH_MAX_DELAY,
    BATCH_MAX_EVENTS,
    BATCH_MIN_DELAY,
    CLOSE_TRY_AGAIN,
    batch_requested,
    dumps,
    events_payloads,
)

log = logging.getLogger(__name__)

GAP_WAIT = 0.02  # how long an out-of-order event waits for the missing ones to come over NATS
SLOW_CONSUMER_BYTES = 4 * 1024 * 1024  # a socket with more unsent data than this is closed
L1_SIZE = 4096
REPLAY_DRAIN_WAIT = 0.05  # seconds between looks at a replaying socket whose unsent data passed SLOW_CONSUMER_BYTES
DELIVERY_BATCH = 256  # events written to a socket in one go when several are waiting
# A batched turn costs CPU in proportion to the sockets it writes: the next one waits this many times as long, so a
# hot room's delivery takes about a ninth of a core and a small room's events still leave within milliseconds; but
# never so long that a group's next write begins more than BATCH_MAX_DELAY after its previous one began (on a busy
# machine a write takes longer than its CPU time: the wait shrinks, not the latency bound).
BATCH_DELAY_FACTOR = 8.0
# A room's batching sockets are written in groups of at most this many, one group per turn, each group once per
# cycle: a room of thousands gets the same writes per socket as one write to all of them per cycle, but spread over
# the cycle, so the last socket of a turn hears it a few milliseconds after the first, not tens (and its readers are
# not woken all at once). The latency is the cycle's, which lets the cycle be longer for the same bound.
BATCH_GROUP = 1000
# How a system event's frame begins (`{"type":"event","seq":N,"kind":"nowplaying"`): found without parsing.
SYSTEM_MARK = '"kind":"nowplaying"'

FetchAfter = Callable[[int, int, int], Awaitable[list[dict[str, Any]]]]
LastCommitted = Callable[[], Awaitable[int]]
RangeCache = Callable[[int, int], Awaitable[list[tuple[int, str]] | None]]
# A committed event as it travels between replicas and to sockets: (seq, `event` frame text,
# commit time in ms for messages, else None). Encoded once, where it enters the replica.
Encoded = tuple[int, str, int | None]


def encode(ev: dict[str, Any]) -> Encoded:
    return ev["seq"], dumps({"type": "event", **ev}), ev["ts"] if ev["kind"] == "message" else None


def text_frame(data: str | bytes) -> bytes:
    """An unmasked, uncompressed, final WebSocket text frame (RFC 6455 5.2) carrying `data` (text, or UTF-8)."""
    payload = data.encode() if isinstance(data, str) else data
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


class Client:
    __slots__ = ("batch", "buffer", "close_task", "closing", "inflight", "last_op", "last_read", "last_sent",
                 "last_typing", "name", "outq", "role", "session", "transport", "user", "ws")

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, user: str, name: str, role: str,
                 session: str | None = None) -> None:
        self.ws = ws
        self.transport = request.transport
        self.user = user
        self.name = name
        self.role = role
        self.session = session  # the API session the token was issued in (claim `sid`), when it says
        # Negotiated at the handshake (`?batch=1`), fixed for the socket's life: live events in `events` frames.
        self.batch = batch_requested(request.query)
        self.last_sent = 0
        # While not None, live events are parked here (welcome or a replay is being sent first).
        self.buffer: list[tuple[int, str]] | None = []
        self.closing = False
        # The server's close of this socket, when it closes it from outside the socket's own handler: the handler
        # waits for it before returning, so the close frame goes out before the connection ends.
        self.close_task: asyncio.Task[Any] | None = None
        self.inflight: set[asyncio.Task[Any]] = set()
        # Done once the newest sequenced frame's operation is in the commit queue (or refused): the next one waits
        # for it there, so a socket's operations take their seqs in the order its frames came.
        self.last_op: asyncio.Future[None] | None = None
        self.last_typing: tuple[bool, float] = (False, 0.0)  # (active, monotonic time) of the last one relayed
        self.last_read = -1
        self.outq: list[bytes] = []  # frames written together at the end of this loop iteration

    @property
    def is_moderator(self) -> bool:
        return self.role in ("owner", "moderator", "admin")

    def congested(self) -> bool:
        return self.transport is None or self.transport.get_write_buffer_size() > SLOW_CONSUMER_BYTES

    def send_soon(self, data: str) -> None:
        """Queue a frame; every frame queued in the same loop iteration goes out in one write
        (the acks of one group commit cost one system call per socket, not one each)."""
        if self.closing:
            return
        self.outq.append(text_frame(data))
        if len(self.outq) == 1:
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        if self.outq and not self.closing and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.outq))
        self.outq.clear()

    async def send(self, data: str) -> bool:
        if self.closing:
            return False
        try:
            await self.ws.send_str(data)
            return True
        except (ConnectionError, RuntimeError):
            self.closing = True
            return False


class Sockets:
    """The live sockets of a room, those that take one frame per event and those that take batches kept apart, so
    each delivery walks only its own; the batching ones in groups of at most `group_size`, written in turn, each
    with the seq its last write reached (`positions`). A set to everyone else (add, discard, iterate, count)."""

    __slots__ = ("group_size", "groups", "positions", "single")

    def __init__(self, group_size: int = BATCH_GROUP) -> None:
        self.group_size = group_size
        self.single: set[Client] = set()
        self.groups: list[set[Client]] = [set()]
        self.positions: list[int] = [0]

    @property
    def batched(self) -> int:
        return sum(map(len, self.groups))

    def add(self, client: Client) -> None:
        if not client.batch:
            self.single.add(client)
            return
        if self.batched >= self.group_size * len(self.groups):
            # A new group starts where the one furthest behind stands: its next write holds every event any
            # group still lacks, and a socket takes from it only what its replay did not send.
            self.groups.append(set())
            self.positions.append(min(self.positions))
        min(self.groups, key=len).add(client)

    def discard(self, client: Client) -> None:
        if not client.batch:
            self.single.discard(client)
            return
        for group in self.groups:
            group.discard(client)

    def __iter__(self) -> Iterator[Client]:
        yield from self.single
        for group in self.groups:
            yield from group

    def __len__(self) -> int:
        return len(self.single) + self.batched

    def __contains__(self, client: object) -> bool:
        return client in self.single or any(client in group for group in self.groups)


class Room:
    def __init__(self, name: str, fetch_after: FetchAfter, l2_range: RangeCache | None = None, *,
                 clock: Callable[[], float] = time.time, last_committed: LastCommitted | None = None,
                 on_system: Callable[[str], None] | None = None, replay_after: FetchAfter | None = None,
                 batch_group: int = BATCH_GROUP, gap_wait: float = GAP_WAIT) -> None:
        self.name = name
        self.gap_wait = gap_wait
        # Resume reads (may be served by a read replica, never short): gap fills and catch-up use `fetch_after`.
        self.replay_after = replay_after or fetch_after
        self.on_system = on_system  # called, in seq order, with the frame of each system event delivered
        self.clock = clock  # epoch seconds, compared with commit times for the delivery delay
        self.fetch_after = fetch_after
        self.last_committed = last_committed
        self.l2_range = l2_range
        self.delivered = 0
        self.pending: dict[int, Encoded] = {}
        self.clients = Sockets(batch_group)
        self.l1: deque[tuple[int, str]] = deque(maxlen=L1_SIZE)
        self.outbox: deque[tuple[int, str, int | None]] = deque()
        self.wake = asyncio.Event()
        # Batched delivery: events delivered to per-event sockets wait here until every group of batching sockets
        # has been written them (in seq order; the group whose turn is next is `turn`).
        self.coalescing: list[Encoded] = []
        self.flush_at: asyncio.TimerHandle | None = None
        self.flush_due = False
        self.flush_every = False  # the next turn writes every group (a frame's worth of events is waiting)
        self.turn = 0
        self.batch_delay = BATCH_MIN_DELAY
        self.task: asyncio.Task[None] | None = None
        self.gap_task: asyncio.Task[None] | None = None
        self.gap_since: float | None = None  # loop time the gap below `pending` appeared

    def start(self, delivered: int) -> None:
        self.delivered = delivered
        self.task = asyncio.create_task(self._deliver_loop(), name="chat-deliver")

    async def stop(self) -> None:
        if self.flush_at is not None:
            self.flush_at.cancel()
        for task in (self.task, self.gap_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # -- sequencer --------------------------------------------------------
    def feed(self, items: list[Encoded]) -> None:
        had_gap = bool(self.pending)
        for item in items:
            if item[0] > self.delivered:
                self.pending.setdefault(item[0], item)
        advanced = False
        while (nxt := self.delivered + 1) in self.pending:
            item = self.pending.pop(nxt)
            self.delivered = nxt
            self.l1.append((nxt, item[1]))
            self.outbox.append(item)
            if self.on_system is not None and item[1].find(SYSTEM_MARK, 0, 64) != -1:
                self.on_system(item[1])
            self.wake.set()
            advanced = True
        if not self.pending:
            return
        if advanced or not had_gap or self.gap_since is None:
            self.gap_since = asyncio.get_running_loop().time()  # a new gap: fan-out gets its grace for this one
        if self.gap_task is None or self.gap_task.done():
            self.gap_task = asyncio.create_task(self._fill_gap(), name="chat-gap-fill")

    async def _fill_gap(self) -> None:
        """Fills the gap below the pending events from PostgreSQL once it has lasted `gap_wait`. Each gap gets the
        whole wait: in a room written on two replicas there is a new one at nearly every commit of the other, and
        its events are on their way over NATS."""
        loop = asyncio.get_running_loop()
        while self.pending and self.delivered + 1 not in self.pending:
            wait = (self.gap_since or 0.0) + self.gap_wait - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            upto = min(self.pending) - 1
            try:
                events = await self.fetch_after(self.delivered, upto, 1000)
            except Exception as exc:
                log.warning("gap fill failed", extra={"error": repr(exc)})
                await asyncio.sleep(0.5)
                continue
            metrics.GAP_FILLS.inc(len(events))
            if not events and self.last_committed is not None:
                try:
                    committed = await self.last_committed()
                except Exception as exc:
                    log.warning("gap fill failed", extra={"error": repr(exc)})
                    await asyncio.sleep(0.5)
                    continue
                if committed <= upto:
                    # Events are published after their commit: one PostgreSQL does not have was never
                    # committed. Whoever published it, it is not the room's, and must not move `delivered`.
                    forged = [s for s in self.pending if s > committed]
                    for seq in forged:
                        del self.pending[seq]
                    bus.reject(inbound.EVENTS, "not_committed", seq=min(forged))
                    upto = committed
            # PostgreSQL holds every seq below one that was published (seqs are allocated under the
            # room lock), so a hole in its answer was removed by retention: skip it.
            self._skip_to(events[0]["seq"] - 1 if events else upto)
            self.feed([encode(ev) for ev in events])

    async def catch_up(self, last_seq: int) -> None:
        """Deliver everything up to `last_seq` (committed per PostgreSQL) that fan-out has not brought."""
        while self.delivered < last_seq:
            events = await self.fetch_after(self.delivered, last_seq, 1000)
            if not events:
                self._skip_to(last_seq)
                break
            metrics.GAP_FILLS.inc(len(events))
            self._skip_to(events[0]["seq"] - 1)
            self.feed([encode(ev) for ev in events])

    def _skip_to(self, seq: int) -> None:
        """Consider everything up to `seq` delivered (gone by retention). Never goes back: fan-out
        may have delivered more while the query that decided this was running."""
        if seq > self.delivered:
            self.delivered = seq
            for stale in [s for s in self.pending if s <= seq]:
                del self.pending[stale]

    def trim(self, floor: int) -> None:
        """Forget cached frames at or below `floor` (removed by retention)."""
        while self.l1 and self.l1[0][0] <= floor:
            self.l1.popleft()

    # -- delivery ---------------------------------------------------------
    async def _deliver_loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.outbox or self.flush_due:
                if self.outbox:
                    batch = [self.outbox.popleft() for _ in range(min(len(self.outbox), DELIVERY_BATCH))]
                    batching = self.clients.batched
                    if self.clients.single or not batching:
                        self._deliver(batch)
                    if batching:
                        self._coalesce(batch)
                if self.flush_due:
                    self._flush_batched()
                await asyncio.sleep(0)  # let acks and reads through between two batches

    def _deliver(self, batch: list[tuple[int, str, int | None]]) -> None:
        """Write the events of `batch` (consecutive seqs) to every live socket that takes one frame per event:
        pre-built frames, one write per socket for the whole batch."""
        frames = [text_frame(data) for _, data, _ in batch]
        first = batch[0][0]

        def rest(last_sent: int) -> tuple[bytes, int]:
            skip = last_sent - first + 1
            return b"".join(frames[skip:]), len(frames) - skip

        self._write(self.clients.single, batch, frames[0] if len(frames) == 1 else b"".join(frames), rest)

    def _write(self, clients: Iterable[Client], items: list[Encoded], whole: bytes,
               rest: Callable[[int], tuple[bytes, int]]) -> None:
        """Write `whole` (the frames of `items`, in seq order) to each of `clients` that lacks them, in one write,
        no await (the sockets are uncompressed, and congestion is checked here instead of by drain()). A socket that
        has the first ones already (a replay) gets `rest(its last seq)`: the bytes and events it lacks; a socket
        still parked (welcome or replay under way) gets the events in its buffer."""
        first, last = items[0][0], items[-1][0]
        sent = 0
        for client in list(clients):
            if client.buffer is not None:
                client.buffer.extend((seq, data) for seq, data, _ in items)
            elif client.last_sent < last and not client.closing:
                if client.congested():
                    self.drop_slow(client)
                    continue
                assert client.transport is not None
                if client.last_sent < first:
                    client.transport.write(whole)
                    sent += len(items)
                else:
                    data, count = rest(client.last_sent)
                    client.transport.write(data)
                    sent += count
                client.last_sent = last
        metrics.DELIVERIES.inc(sent)
        # One observation per write, of its oldest message: the worst commit-to-delivery delay in it.
        oldest = next((ts for _, _, ts in items if ts is not None), None)
        if oldest is not None:
            metrics.FANOUT_SECONDS.observe(max(0.0, self.clock() - oldest / 1000))

    def _coalesce(self, batch: list[Encoded]) -> None:
        """Hold `batch` for the batching sockets' next writes: a group's turn comes after the room's batch delay,
        every group's at once when a frame's worth of events is waiting."""
        self.coalescing.extend(batch)
        if len(self.coalescing) >= BATCH_MAX_EVENTS:
            self.flush_every = True
            self._flush_soon()
        elif self.flush_at is None:
            self.flush_at = asyncio.get_running_loop().call_later(self.batch_delay, self._flush_soon)

    def _flush_soon(self) -> None:
        if self.flush_at is not None:
            self.flush_at.cancel()
            self.flush_at = None
        self.flush_due = True
        self.wake.set()

    def _flush_batched(self) -> None:
        """A turn of the batching sockets: what coalesced since the group's last write (every group's, when a
        frame's worth was waiting), as `events` frames built once from the events' encoded frames, all of them in
        one write per socket (no await, as in `_deliver`). Then the next turn is timed."""
        self.flush_due = False
        groups, positions = self.clients.groups, self.clients.positions
        if self.flush_every:
            self.flush_every = False
            turns = range(len(groups))
        else:
            self.turn %= len(groups)
            turns = range(self.turn, self.turn + 1)
            self.turn += 1
        started, cpu = time.perf_counter(), time.thread_time()
        for g in turns:
            start = bisect.bisect_right(self.coalescing, positions[g], key=lambda item: item[0])
            if start < len(self.coalescing):
                if groups[g]:  # (a group its sockets all left still moves on)
                    self._write_group(groups[g], self.coalescing[start:])
                positions[g] = self.coalescing[-1][0]
        # What every group has been written is no longer needed here.
        done = bisect.bisect_right(self.coalescing, min(positions), key=lambda item: item[0])
        del self.coalescing[:done]
        spent, took = time.thread_time() - cpu, time.perf_counter() - started
        self.batch_delay = max(BATCH_MIN_DELAY, min(BATCH_DELAY_FACTOR * spent, BATCH_MAX_DELAY / len(groups) - took))
        if self.coalescing and self.flush_at is None:  # some group has yet to be written these: its turn comes
            self.flush_at = asyncio.get_running_loop().call_later(self.batch_delay, self._flush_soon)

    def _write_group(self, clients: set[Client], items: list[Encoded]) -> None:
        payloads = [data.encode() for _, data, _ in items]
        seqs = [seq for seq, _, _ in items]

        def rest(last_sent: int) -> tuple[bytes, int]:
            skip = bisect.bisect_right(seqs, last_sent)
            return b"".join(map(text_frame, events_payloads(payloads[skip:]))), len(items) - skip

        self._write(clients, items, b"".join(map(text_frame, events_payloads(payloads))), rest)

    def drop_slow(self, client: Client) -> None:
        if client.closing:
            return
        client.closing = True
        self.clients.discard(client)
        metrics.ERRORS.labels("slow_consumer").inc()
        client.close_task = asyncio.get_running_loop().create_task(
            client.ws.close(code=CLOSE_TRY_AGAIN, message=b"slow consumer"))

    async def broadcast(self, data: str, *, exclude: Client | None = None) -> None:
        """An ephemeral frame (typing, presence, receipts, moderation) to every live socket."""
        sent = 0
        for client in list(self.clients):
            if client is not exclude and client.buffer is None and not client.congested() and await client.send(data):
                sent += 1
        metrics.DELIVERIES.inc(sent)

    # -- replay / resume ----------------------------------------------------
    async def replay(self, client: Client, after: int, marker: Callable[[int, bool], str] | None = None) -> None:
        """Send (after, delivered], then `marker(last seq, truncated)`, then switch the client to live,
        with no gap and no duplicate. The client must be buffering (client.buffer a list) when called.
        """
        pos = after
        truncated = False
        while pos < self.delivered:
            target = self.delivered
            frames = self._l1_range(pos, target)
            if frames is None:
                frames = await self._cached_or_stored(pos, target)
                if not frames:
                    truncated = True
                    pos = target
                    break
                if frames[0][0] != pos + 1:
                    truncated = True
            if not await self._send_events(client, frames):
                return
            pos = frames[-1][0]
        if marker is not None:
            await client.send(marker(pos, truncated))
        # Flush what arrived meanwhile; new arrivals keep landing in the buffer until it is empty.
        while client.buffer:
            parked, client.buffer = client.buffer, []
            fresh = [(seq, data) for seq, data in parked if seq > pos]
            if fresh:
                await self._send_events(client, fresh)
                pos = fresh[-1][0]
        client.buffer = None
        client.last_sent = pos

    @staticmethod
    async def _send_events(client: Client, frames: list[tuple[int, str]]) -> bool:
        """Replayed events, in order: one `event` frame each, or `events` frames for a batching socket."""
        if client.batch:
            for chunk in events_payloads([data.encode() for _, data in frames]):
                if not await client.send(chunk.decode()):
                    return False
            return True
        # One write for the whole range, not one per event: a crowd resuming on a fresh worker (a restart, a crash)
        # replays tens of events each, and a system call per event was most of what a resume cost.
        transport = client.transport
        if client.closing or transport is None or transport.is_closing():
            return False
        transport.write(b"".join([text_frame(data) for _, data in frames]))
        # (polled: the transport offers no drain event of its own; only a slow reader ever waits here)
        while client.congested() and not client.closing and not transport.is_closing():  # noqa: ASYNC110
            await asyncio.sleep(REPLAY_DRAIN_WAIT)  # a slow reader: the next range waits for this one to go out
        return not client.closing

    def _l1_range(self, after: int, upto: int) -> list[tuple[int, str]] | None:
        if not self.l1 or self.l1[0][0] > after + 1 or self.l1[-1][0] < upto:
            return None
        start = after + 1 - self.l1[0][0]
        end = min(start + min(upto - after, 1000), len(self.l1))
        frames = [self.l1[i] for i in range(start, end)]
        contiguous = bool(frames) and frames[0][0] == after + 1 and frames[-1][0] == after + len(frames)
        return frames if contiguous else None

    async def _cached_or_stored(self, after: int, upto: int) -> list[tuple[int, str]]:
        if self.l2_range is not None:
            cached = await self.l2_range(after, upto)
            if cached:
                return cached
        return [(seq, frame) for seq, frame, _ in map(encode, await self.replay_after(after, upto, 1000))]
