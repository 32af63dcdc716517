"""PostgreSQL: the room's durable event log, with group commit.

Every sequenced event a client makes (message, edit, delete, reaction change) goes through
:class:`GroupCommitter`: sends that arrive while a transaction is in flight wait
and go together into the next one (one ``chat_append`` call: one round trip, one
commit). A waiter learns its seq only after that commit returned, so an ack is
never sent for something PostgreSQL does not hold. System events (the bound channel's track
changes, `nowplaying`) are rare and come one at a time: :meth:`Store.append_system` writes them
through the same ``chat_append``, so they take their seq under the same lock, in order with messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from opentelemetry import trace

from veza_core import directory
from veza_core.db import create_pool
from veza_core.replica import ReadRouter
from veza_core.tracing import batch_span

from . import metrics

log = logging.getLogger(__name__)
tracer = trace.get_tracer("veza.chat")

APPEND = "SELECT r_ord, r_seq, r_id, r_created, r_duplicate FROM chat_append($1,$2,$3,$4,$5,$6,$7,$8,$9)"
EVENT_COLUMNS = ("seq, kind, id, author, author_name, body, reply_to, target, emoji, created_at, edited_at, deleted_at,"
                 " meta")
SYSTEM = "system"  # the author of system events; user ids are the API's UUIDs, never this


class StoreUnavailable(Exception):
    """PostgreSQL could not be reached or refused the write: nothing was acknowledged."""


@dataclass(frozen=True)
class Op:
    kind: str
    author: str
    author_name: str
    cid: str
    body: str | None = None
    reply_to: int | None = None
    target: int | None = None
    emoji: str | None = None


@dataclass(frozen=True)
class Appended:
    seq: int
    id: str
    duplicate: bool
    event: dict[str, Any] | None  # None for duplicates: the event was delivered when first committed


def _ms(ts: datetime | None) -> int | None:
    return None if ts is None else int(ts.timestamp() * 1000)


def event_dict(seq: int, kind: str, id_: Any, author: str, author_name: str, *, body: str | None = None,
               reply_to: int | None = None, target: int | None = None, emoji: str | None = None,
               created_at: datetime | None = None, edited_at: datetime | None = None,
               deleted_at: datetime | None = None, now_playing: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `event` payload clients see (docs/chat-protocol.md), without null members."""
    event: dict[str, Any] = {"seq": seq, "kind": kind, "id": str(id_), "author": {"id": author, "name": author_name},
                             "ts": _ms(created_at)}
    if body is not None:
        event["text"] = body
    if reply_to is not None:
        event["reply_to"] = reply_to
    if target is not None:
        event["target"] = target
    if emoji is not None:
        event["emoji"] = emoji
    if edited_at is not None:
        event["edited_ts"] = _ms(edited_at)
    if deleted_at is not None:
        event["deleted"] = True
    if now_playing is not None:
        event["now_playing"] = now_playing
    return event


def row_event(row: asyncpg.Record) -> dict[str, Any]:
    meta = row["meta"]
    return event_dict(row["seq"], row["kind"], row["id"], row["author"], row["author_name"], body=row["body"],
                      reply_to=row["reply_to"], target=row["target"], emoji=row["emoji"],
                      created_at=row["created_at"], edited_at=row["edited_at"], deleted_at=row["deleted_at"],
                      now_playing=json.loads(meta) if meta is not None and row["kind"] == "nowplaying" else None)


async def room_sanctions(pool: asyncpg.Pool, rooms: list[str]) -> dict[str, list[tuple[str, str, float | None]]]:
    """The sanctions in force in each of `rooms` (one query for every room a worker serves):
    {room: [(user, kind, until epoch seconds or None)]}."""
    found: dict[str, list[tuple[str, str, float | None]]] = {}
    for r in await pool.fetch("SELECT room, user_id, kind, until FROM chat_sanctions WHERE room = ANY($1::text[])"
                              " AND (until IS NULL OR until > now())", rooms):
        found.setdefault(r["room"], []).append(
            (r["user_id"], r["kind"], None if r["until"] is None else r["until"].timestamp()))
    return found


class Store:
    """The room's tables. Reads that may lag (history pages, resume) pass `replica=True`: they go through the
    read router, which sends them to the read replica when it has replayed every write this worker knows of
    (docs/chat-protocol.md, "Read replicas"); everything else reads and writes the primary."""

    def __init__(self, url: str, room: str, *, read_url: str | None = None, max_lag: float = 5.0,
                 hold_writer: bool = False) -> None:
        self.url = url
        self.room = room
        self.read_url = read_url
        self.max_lag = max_lag
        self.pool: asyncpg.Pool | None = None
        self.router: ReadRouter | None = None
        self.owned = True  # whether close() closes the pool and the router
        # A room with workers of its own keeps one pool connection for its group commits: a commit through the
        # pool is two round trips (the pool's reset of the connection on release is the second) and the pool's
        # bookkeeping, paid by every message. A pool worker's rooms share few connections and borrow one each time.
        self.hold_writer = hold_writer
        self.writer: asyncpg.pool.PoolConnectionProxy | None = None

    async def open(self, title: str | None = None, visibility: str = "public", *, declare: bool = True,
                   shared: tuple[asyncpg.Pool, ReadRouter] | None = None) -> None:
        """Connect (or take the worker's `shared` pool and read router: every room of a process uses one) and make
        sure the room's sequence row exists."""
        self.owned = shared is None
        self.pool = await create_pool(self.url, min_size=2, max_size=8) if shared is None else shared[0]
        async with self.pool.acquire() as conn:
            await conn.execute("INSERT INTO chat_rooms (room) VALUES ($1) ON CONFLICT DO NOTHING", self.room)
            if declare:  # the API lists the room from the directory: a dedicated room's own workers declare it
                await directory.declare(conn, "room", self.room, title or self.room, visibility)
        if shared is None:
            self.router = ReadRouter(self.pool, self.read_url, max_lag=self.max_lag, component="chat")
            await self.router.start()
        else:
            self.router = shared[1]

    async def close(self) -> None:
        """Close what this store opened; a shared pool and router belong to the worker."""
        await self._release_writer()
        if not self.owned:
            self.pool = self.router = None
            return
        if self.router is not None:
            await self.router.close()
            self.router = None
        if self.pool is not None:
            await self.pool.close()

    def wrote(self) -> None:
        """The room changed (a commit here, or one another replica announced): reads that may lag must see it."""
        if self.router is not None:
            self.router.wrote()

    def _db(self, replica: bool) -> asyncpg.Pool | ReadRouter:
        if replica and self.router is not None:
            return self.router
        return self._pool()

    def _pool(self) -> asyncpg.Pool:
        if self.pool is None:
            raise StoreUnavailable("the database is not connected yet")
        return self.pool

    async def _release_writer(self, *, broken: bool = False) -> None:
        writer, self.writer = self.writer, None
        if writer is None or self.pool is None:
            return
        if broken:
            writer.terminate()  # whatever state it is in, it is not reused (the pool opens a fresh one)
        with contextlib.suppress(Exception):
            await self.pool.release(writer, timeout=2.0)

    async def append(self, ops: list[Op]) -> list[Appended]:
        args = (APPEND, self.room, [o.kind for o in ops], [o.author for o in ops], [o.author_name for o in ops],
                [o.cid for o in ops], [o.body for o in ops], [o.reply_to for o in ops], [o.target for o in ops],
                [o.emoji for o in ops])
        try:
            if not self.hold_writer:
                rows = await self._pool().fetch(*args)
            else:
                if self.writer is None:
                    self.writer = await self._pool().acquire()
                rows = await self.writer.fetch(*args)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if self.hold_writer:  # the next commit takes a fresh connection
                await self._release_writer(broken=not isinstance(exc, asyncpg.PostgresError))
            raise StoreUnavailable(str(exc) or type(exc).__name__) from exc
        self.wrote()  # before any ack: the sender's next history read waits for (or skips) a replica behind it
        by_ord = {r["r_ord"]: r for r in rows}
        out: list[Appended] = []
        for i, op in enumerate(ops, start=1):
            r = by_ord[i]
            event = None if r["r_duplicate"] else event_dict(
                r["r_seq"], op.kind, r["r_id"], op.author, op.author_name, body=op.body, reply_to=op.reply_to,
                target=op.target, emoji=op.emoji, created_at=r["r_created"])
            out.append(Appended(r["r_seq"], str(r["r_id"]), bool(r["r_duplicate"]), event))
        return out

    async def append_system(self, kind: str, cid: str, body: str, meta: dict[str, Any]) -> Appended:
        """A system event, once per `cid` (a second append of the same cid is a duplicate, not stored)."""
        try:
            async with self._pool().acquire() as conn, conn.transaction():
                row = await conn.fetchrow(APPEND, self.room, [kind], [SYSTEM], [SYSTEM], [cid], [body], [None],
                                          [None], [None])
                if not row["r_duplicate"]:
                    await conn.execute("UPDATE chat_events SET meta = $3::jsonb WHERE room = $1 AND seq = $2",
                                       self.room, row["r_seq"], json.dumps(meta))
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(str(exc) or type(exc).__name__) from exc
        self.wrote()
        event = None if row["r_duplicate"] else event_dict(
            row["r_seq"], kind, row["r_id"], SYSTEM, SYSTEM, body=body, created_at=row["r_created"],
            now_playing=meta if kind == "nowplaying" else None)
        return Appended(row["r_seq"], str(row["r_id"]), bool(row["r_duplicate"]), event)

    async def last_of_kind(self, kind: str) -> dict[str, Any] | None:
        """The room's newest event of `kind` (the track on air when the worker starts)."""
        row = await self._pool().fetchrow(
            f"SELECT {EVENT_COLUMNS} FROM chat_events WHERE room = $1 AND kind = $2"  # noqa: S608
            " ORDER BY seq DESC LIMIT 1", self.room, kind)
        return None if row is None else row_event(row)

    async def last_seq(self, *, replica: bool = False) -> int:
        return int(await self._db(replica).fetchval("SELECT last_seq FROM chat_rooms WHERE room = $1", self.room)
                   or 0)

    async def events_after(self, after: int, limit: int, upto: int | None = None, *,
                           replica: bool = False) -> list[dict[str, Any]]:
        """Events with seq > after (and <= upto), ascending."""
        rows = await self._db(replica).fetch(
            f"SELECT {EVENT_COLUMNS} FROM chat_events WHERE room = $1 AND seq > $2 AND seq <= $3"  # noqa: S608
            " ORDER BY seq LIMIT $4", self.room, after, upto if upto is not None else 2**62, limit)
        return [row_event(r) for r in rows]

    async def events_through(self, after: int, upto: int, limit: int) -> list[dict[str, Any]]:
        """Events (after, upto], ascending, for a resume: from the replica when the read rule allows, checked
        to be complete. Seqs below the last committed one have no holes but at the bottom (retention), so an
        answer that neither reaches `upto` nor fills `limit` came from a replica behind: read the primary."""
        events = await self.events_after(after, limit, upto, replica=True)
        if self.router is None or (events and (events[-1]["seq"] >= upto or len(events) >= limit)):
            return events
        rows = await self.router.on_primary(lambda pool: pool.fetch(
            f"SELECT {EVENT_COLUMNS} FROM chat_events WHERE room = $1 AND seq > $2 AND seq <= $3"  # noqa: S608
            " ORDER BY seq LIMIT $4", self.room, after, upto, limit), "incomplete")
        return [row_event(r) for r in rows]

    async def events_before(self, before: int, limit: int, *, replica: bool = False) -> list[dict[str, Any]]:
        """The `limit` events just before `before`, ascending."""
        rows = await self._db(replica).fetch(
            f"SELECT {EVENT_COLUMNS} FROM chat_events WHERE room = $1 AND seq < $2"  # noqa: S608
            " ORDER BY seq DESC LIMIT $3", self.room, before, limit)
        return [row_event(r) for r in reversed(rows)]

    async def with_reactions(self, events: list[dict[str, Any]], *, replica: bool = False) -> list[dict[str, Any]]:
        """Adds `reactions` ({emoji: [user ids]}) to the message events of a history page."""
        seqs = [e["seq"] for e in events if e["kind"] == "message"]
        if not seqs:
            return events
        rows = await self._db(replica).fetch(
            "SELECT seq, emoji, array_agg(user_id ORDER BY user_id) AS users FROM chat_reactions"
            " WHERE room = $1 AND seq = ANY($2::bigint[]) GROUP BY seq, emoji", self.room, seqs)
        found: dict[int, dict[str, list[str]]] = {}
        for r in rows:
            found.setdefault(r["seq"], {})[r["emoji"]] = list(r["users"])
        for e in events:
            if e["seq"] in found:
                e["reactions"] = found[e["seq"]]
        return events

    async def event(self, seq: int) -> dict[str, Any] | None:
        row = await self._pool().fetchrow(
            f"SELECT {EVENT_COLUMNS} FROM chat_events WHERE room = $1 AND seq = $2", self.room, seq)  # noqa: S608
        return None if row is None else row_event(row)

    async def first_seq(self) -> int | None:
        value = await self._pool().fetchval("SELECT min(seq) FROM chat_events WHERE room = $1", self.room)
        return None if value is None else int(value)

    async def mark_read(self, user: str, seq: int) -> int:
        return int(await self._pool().fetchval(
            "INSERT INTO chat_reads (room, user_id, seq)"
            " SELECT $1, $2, LEAST($3, last_seq) FROM chat_rooms WHERE room = $1 ON CONFLICT (room, user_id)"
            " DO UPDATE SET seq = GREATEST(chat_reads.seq, EXCLUDED.seq), updated_at = now() RETURNING seq",
            self.room, user, seq) or 0)

    async def reads(self) -> dict[str, int]:
        rows = await self._pool().fetch("SELECT user_id, seq FROM chat_reads WHERE room = $1", self.room)
        return {r["user_id"]: int(r["seq"]) for r in rows}

    async def sanctions(self) -> list[tuple[str, str, float | None]]:
        """Active (user, kind, until epoch seconds or None)."""
        rows = await self._pool().fetch(
            "SELECT user_id, kind, until FROM chat_sanctions WHERE room = $1 AND (until IS NULL OR until > now())",
            self.room)
        return [(r["user_id"], r["kind"], None if r["until"] is None else r["until"].timestamp()) for r in rows]

    async def sanctions_of(self, user: str) -> dict[str, float | None]:
        """The sanctions in force on `user`: {kind: until epoch seconds or None}."""
        rows = await self._pool().fetch(
            "SELECT kind, until FROM chat_sanctions WHERE room = $1 AND user_id = $2"
            " AND (until IS NULL OR until > now())", self.room, user)
        return {r["kind"]: None if r["until"] is None else r["until"].timestamp() for r in rows}

    async def sanction(self, user: str, kind: str, until: float | None, reason: str | None, by: str) -> None:
        await self._pool().execute(
            "INSERT INTO chat_sanctions (room, user_id, kind, until, reason, by_user)"
            " VALUES ($1, $2, $3, to_timestamp($4), $5, $6) ON CONFLICT (room, user_id, kind)"
            " DO UPDATE SET until = EXCLUDED.until, reason = EXCLUDED.reason, by_user = EXCLUDED.by_user,"
            " created_at = now()", self.room, user, kind, until, reason, by)

    async def lift(self, user: str, kind: str) -> None:
        await self._pool().execute("DELETE FROM chat_sanctions WHERE room = $1 AND user_id = $2 AND kind = $3",
                                   self.room, user, kind)

    async def purge(self) -> int:
        """Delete everything the room ever stored (deletionPolicy Delete); returns the events deleted."""
        async with self._pool().acquire() as conn, conn.transaction():
            status = await conn.execute("DELETE FROM chat_events WHERE room = $1", self.room)
            for table in ("chat_reactions", "chat_reads", "chat_sanctions", "chat_rooms"):
                await conn.execute(f"DELETE FROM {table} WHERE room = $1", self.room)  # noqa: S608 - fixed names
            await conn.execute("DELETE FROM rooms WHERE name = $1", self.room)
        return int(status.split()[-1])

    async def apply_retention(self, days: float | None, max_messages: int | None, *, now: float) -> int:
        """Delete events older than `days` before `now` (epoch seconds, the worker's clock) / beyond the
        newest `max_messages`; one replica at a time."""
        deleted = 0
        async with self._pool().acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtext('veza-chat-retention:' || $1))",
                                       self.room):
                return 0
            floor = 0
            if max_messages is not None:
                last = await conn.fetchval("SELECT last_seq FROM chat_rooms WHERE room = $1", self.room) or 0
                floor = max(0, int(last) - max_messages)
            if days is not None:
                # Oldest first along the primary key (created_at grows with seq), at most 100k a run.
                old = await conn.fetchval(
                    "SELECT max(seq) FROM (SELECT seq, created_at FROM chat_events WHERE room = $1 ORDER BY seq"
                    " LIMIT 100000) oldest WHERE created_at < to_timestamp($2) - make_interval(secs => $3)",
                    self.room, now, days * 86400.0)
                floor = max(floor, int(old or 0))
            if floor:
                status = await conn.execute("DELETE FROM chat_events WHERE room = $1 AND seq <= $2", self.room, floor)
                await conn.execute("DELETE FROM chat_reactions WHERE room = $1 AND seq <= $2", self.room, floor)
                deleted = int(status.split()[-1])
        if deleted:
            self.wrote()
        return deleted


# A group commit carries at most this long of per-event work, by its measured cost: after a stall (PostgreSQL slow
# per row, the machine busy) the backlog goes out in several bounded commits, each acked as it returns, rather than
# one that holds every waiter for seconds. What a commit costs whatever its size (the round trip, the room lock, the
# loop's turn) is not split: smaller commits would only pay it more often.
COMMIT_BUDGET = 0.05
MIN_BATCH = 32
COST_WEIGHT = 0.05  # of the newest commit in the cost model's moving averages

Ack = Callable[[Appended], None]
Pending = tuple[Op, "asyncio.Future[Appended]", trace.SpanContext, Ack | None]


class CommitCost:
    """Seconds a commit of n events takes, fitted as fixed + per_event * n over the recent commits (least squares
    on exponentially weighted moments: batch sizes vary enough under load to tell the two apart)."""

    def __init__(self, weight: float = COST_WEIGHT) -> None:
        self.weight = weight
        self.seen = 0
        self.n = self.t = self.nn = self.nt = 0.0

    def observe(self, n: int, seconds: float) -> None:
        w = 1.0 if self.seen == 0 else self.weight
        self.seen += 1
        self.n += w * (n - self.n)
        self.t += w * (seconds - self.t)
        self.nn += w * (n * n - self.nn)
        self.nt += w * (n * seconds - self.nt)

    def per_event(self) -> float | None:
        """The slope, once a few commits of different sizes were seen; None while unknown."""
        spread = self.nn - self.n * self.n
        if self.seen < 8 or spread < 1.0:
            return None
        return (self.nt - self.n * self.t) / spread


class GroupCommitter:
    """Batches concurrent appends of this replica: at most one transaction in flight, in submission order.

    A caller may pass `ack`: it is called with the result as soon as the commit returns, in the committer's own
    step, before any waiter resumes, so the acks of one commit leave in the next loop iteration together."""

    def __init__(self, store: Store, on_commit: Callable[[list[dict[str, Any]]], None], max_batch: int = 500,
                 *, budget: float = COMMIT_BUDGET) -> None:
        self.store = store
        self.on_commit = on_commit
        self.max_batch = max_batch
        self.budget = budget
        self.cost = CommitCost()
        # Each append with the span of the operation that asked for it (the commit continues its trace).
        self.queue: deque[Pending] = deque()
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="chat-group-commit")

    async def stop(self) -> None:
        await self.drain()
        if self.task is not None:
            self.task.cancel()

    async def drain(self) -> None:
        """Wait until every submitted append has been committed (or failed)."""
        while self.queue or not self.idle.is_set():
            await self.idle.wait()
            await asyncio.sleep(0)

    def batch_limit(self) -> int:
        """Events in the next commit, at most: as many as the measured per-event cost fits in `budget`."""
        per_event = self.cost.per_event()
        if per_event is None or per_event * self.max_batch <= self.budget:
            return self.max_batch
        return max(MIN_BATCH, int(self.budget / per_event))

    async def submit(self, op: Op, ack: Ack | None = None) -> Appended:
        return await self.enqueue(op, ack)

    def enqueue(self, op: Op, ack: Ack | None = None) -> asyncio.Future[Appended]:
        """`op` in the queue now, in call order; the future is its result."""
        fut: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        self.queue.append((op, fut, trace.get_current_span().get_span_context(), ack))
        self.idle.clear()
        self.wake.set()
        return fut

    async def _run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue:
                batch = [self.queue.popleft() for _ in range(min(len(self.queue), self.batch_limit()))]
                try:
                    await self._commit(batch)
                except Exception:  # never let the committer die
                    log.exception("group commit failed")
                    for _, fut, _, _ in batch:
                        if not fut.done():
                            fut.set_exception(StoreUnavailable("internal error"))
            self.idle.set()

    async def _commit(self, batch: list[Pending]) -> None:
        with batch_span(tracer, "chat commit", [cause for _, _, cause, _ in batch],
                        attributes={"veza.room": self.store.room, "veza.batch": len(batch)}):
            await self._commit_batch(batch)

    async def _commit_batch(self, batch: list[Pending]) -> None:
        # The same (author, cid) twice in one batch (a quick retry) is one op with two waiters.
        index: dict[tuple[str, str], int] = {}
        ops: list[Op] = []
        waiters: list[list[tuple[asyncio.Future[Appended], Ack | None]]] = []
        for op, fut, _, ack in batch:
            key = (op.author, op.cid)
            if key in index:
                waiters[index[key]].append((fut, ack))
            else:
                index[key] = len(ops)
                ops.append(op)
                waiters.append([(fut, ack)])
        started = time.perf_counter()
        try:
            results = await self.store.append(ops)
        except StoreUnavailable as exc:
            metrics.STORE_ERRORS.inc()
            for futs in waiters:
                for fut, _ in futs:
                    if not fut.done():
                        fut.set_exception(StoreUnavailable(str(exc)))
            return
        took = time.perf_counter() - started
        self.cost.observe(len(ops), took)
        metrics.COMMIT_SECONDS.observe(took)
        metrics.BATCH_SIZE.observe(len(ops))
        fresh = [r.event for r in results if r.event is not None]
        if fresh:
            self.on_commit(fresh)
        for result, futs in zip(results, waiters, strict=True):
            for n, (fut, ack) in enumerate(futs):
                if fut.done():  # its sender went away (the socket closed): nobody to tell
                    continue
                answer = result if n == 0 else Appended(result.seq, result.id, True, None)
                if ack is not None:  # must not raise: the commit is done, every waiter must hear of it
                    ack(answer)
                fut.set_result(answer)
