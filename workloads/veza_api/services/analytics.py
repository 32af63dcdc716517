"""The analytics consumer (docs/analytics.md): the bus's JetStream events, applied once each to the analytics store.

Sources, each read through a durable pull consumer with explicit acks (`veza_core.events.durable_subscribe`):

- every room's stream (``VEZA_CHAT_<platform>_<room>``, found by listing the streams every
  ``analytics_rescan_seconds``): message events → messages per room and hour, active users per day;
- the channels' stream: now-playing events → plays per track;
- the stats stream: listener counts → listening seconds per channel, rendition and hour, and daily peak listeners;
  chat connection counts → daily peak connections.

Exactly once: in one transaction an event's id goes into ``analytics.applied_events`` and its aggregate is applied
only when the id was new, so a redelivery or a replay of a stream changes nothing. One API replica consumes at a
time: the one holding a session advisory lock on the analytics database; the others wait for it and take over when
its connection (and so the lock) goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
from aiohttp import web
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import Counter, Gauge
from pydantic import BaseModel

from veza_core import bus, events, tasks
from veza_core.db import migrate, migration_files

log = logging.getLogger("veza.api.analytics")
M = TypeVar("M", bound=BaseModel)

LEADER_LOCK_KEY = 0x7665_7A41  # "vezA", with the platform's hash: the session advisory lock of the consuming replica
DURABLE = "analytics"
SNAPSHOT_EVERY = 5.0  # the producers' period for listener and connection counts
MAX_GAP = 3 * SNAPSHOT_EVERY  # a longer silence counts as this much: the replica was away, not its listeners
STALE = 3 * SNAPSHOT_EVERY  # a replica whose newest snapshot is older than this is gone from the concurrent sum
APPLIED_RETENTION = timedelta(days=7)  # ids older than this are forgotten (streams keep one day)
STORE_RETRY_SECONDS = 20.0  # a handler waits this long for the store to come back before giving the event back
STORE_MIGRATIONS = "migrations/analytics"  # under veza_core
MAX_ROOM_EVENTS_BYTES = 8 * 1024 * 1024  # a group commit, as the chat workers bound it

EVENTS = Counter("veza_api_analytics_events_total", "Events read by the analytics consumer, by source and outcome "
                 "(applied, duplicate: already applied, rejected: malformed)", ["source", "outcome"])
PENDING = Gauge("veza_api_analytics_pending", "Events in the streams not yet applied (the durable consumers' "
                "pending and unacknowledged messages), by source, on the consuming replica", ["source"])
LEADING = Gauge("veza_api_analytics_leading", "1 on the API replica that consumes the analytics events")
SOURCES = ("messages", "nowplaying", "listeners", "connections")
for _source in SOURCES:  # dashboards and alerts read 0, not "no data", from the start
    for _outcome in ("applied", "duplicate", "rejected"):
        EVENTS.labels(_source, _outcome)

_TRANSIENT = (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
              asyncpg.CannotConnectNowError)


# -- the store's schema ------------------------------------------------------------------------------
async def migrate_store(url: str) -> list[str]:
    """Apply the analytics store's migrations (veza_core/migrations/analytics) to the database at `url`."""
    return await migrate(url, folder=STORE_MIGRATIONS, table="analytics.schema_migrations")


async def grant_store(url: str, role: str) -> None:
    """Let the API's role read and write the analytics store (the schema owner applied it)."""
    conn = await asyncpg.connect(url)
    try:
        who = '"' + role.replace('"', '""') + '"'
        async with conn.transaction():
            await conn.execute(f"GRANT USAGE ON SCHEMA analytics TO {who}")
            await conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA analytics TO {who}")
    finally:
        await conn.close()


# -- time ----------------------------------------------------------------------------------------------
def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def hourly_split(start: float, end: float) -> list[tuple[datetime, float]]:
    """The interval [start, end] (epoch seconds) cut at the UTC hours: (hour, seconds in it), in order."""
    out: list[tuple[datetime, float]] = []
    while end > start:
        hour = _hour(_utc(start))
        upto = min(end, (hour + timedelta(hours=1)).timestamp())
        out.append((hour, upto - start))
        start = upto
    return out


# -- parsing -------------------------------------------------------------------------------------------
_LINE = re.compile(r"([1-9][0-9]{0,18}) ([0-9]{1,15}|-) (\{.*\})")


def message_events(data: bytes) -> list[tuple[int, str, str, int]] | None:
    """(seq, event id, author id, commit time in ms) of each message event of a room-events payload (the committing
    replica's id, then `<seq> <ts or -> <event frame>` lines); None when any of it is malformed."""
    if len(data) > MAX_ROOM_EVENTS_BYTES:
        return None
    try:
        worker, *lines = data.decode().split("\n")
    except UnicodeDecodeError:
        return None
    if not re.fullmatch(events.WORKER_ID, worker) or not lines:
        return None
    out: list[tuple[int, str, str, int]] = []
    for line in lines:
        match = _LINE.fullmatch(line)
        if match is None:
            return None
        seq, ts = int(match[1]), match[2]
        if not match[3].startswith(f'{{"type":"event","seq":{seq},'):
            return None
        if '"kind":"message"' not in match[3]:  # edits, deletions, reactions, system events: not counted
            continue
        try:
            frame = json.loads(match[3])
        except (ValueError, RecursionError):
            return None
        if not isinstance(frame, dict) or frame.get("kind") != "message":
            continue
        author, event_id = frame.get("author"), frame.get("id")
        author_id = author.get("id") if isinstance(author, dict) else None
        if ts == "-" or not isinstance(author_id, str) or not author_id or not isinstance(event_id, str) \
                or not 0 < len(event_id) <= 64:
            return None
        out.append((seq, event_id, author_id[:128], int(ts)))
    return out


# -- the store -----------------------------------------------------------------------------------------
class AnalyticsStore:
    """The aggregates, each applied in the transaction that records its event's id."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def apply_messages(self, room: str, messages: list[tuple[int, str, str, int]]) -> int:
        """Count the message events (seq, event id, author, ts ms) of `room` not applied yet; returns how many were
        new. One statement (so one transaction and one round trip): the ids recorded, and the aggregates of the new
        ones. An event's id is `<room>:<seq>` and the event's own id (a room deleted and declared again starts its
        seqs afresh: its new events are new events)."""
        by_seq = {seq: (event_id, author, _utc(ts / 1000)) for seq, event_id, author, ts in messages}
        if not by_seq:
            return 0
        ids = [f"message:{room}:{seq}:{event_id}" for seq, (event_id, _, _) in by_seq.items()]
        moments = [moment for _, _, moment in by_seq.values()]
        new: int = await self.pool.fetchval(
            "WITH e AS (SELECT * FROM unnest($2::text[], $3::timestamptz[], $4::date[], $5::text[])"
            "  AS e(id, hour, day, user_id)),"
            " new AS (INSERT INTO analytics.applied_events (id) SELECT id FROM e ON CONFLICT DO NOTHING RETURNING id),"
            " applied AS (SELECT e.* FROM e JOIN new USING (id)),"
            " counted AS (INSERT INTO analytics.room_messages_hourly (room, hour, messages)"
            "  SELECT $1, hour, count(*) FROM applied GROUP BY hour ON CONFLICT (room, hour) DO UPDATE"
            "  SET messages = room_messages_hourly.messages + EXCLUDED.messages),"
            " active AS (INSERT INTO analytics.active_users_daily (day, user_id)"
            "  SELECT DISTINCT day, user_id FROM applied ORDER BY day, user_id ON CONFLICT DO NOTHING)"
            " SELECT count(*) FROM applied",
            room, ids, [_hour(m) for m in moments], [m.date() for m in moments],
            [author for _, author, _ in by_seq.values()])
        return new

    async def apply_now_playing(self, event: events.NowPlaying) -> bool:
        played: int = await self.pool.fetchval(
            "WITH new AS (INSERT INTO analytics.applied_events (id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING id),"
            " played AS (INSERT INTO analytics.track_plays (channel, title, track_id, plays, last_played)"
            "  SELECT $2, $3, $4, 1, $5 FROM new ON CONFLICT (channel, title) DO UPDATE SET"
            "  plays = track_plays.plays + 1,"
            "  track_id = coalesce(EXCLUDED.track_id, track_plays.track_id),"
            "  last_played = greatest(track_plays.last_played, EXCLUDED.last_played))"
            " SELECT count(*) FROM new",
            f"nowplaying:{event.id}", event.channel, event.title, event.track_id, _utc(event.started_at))
        return played == 1

    async def apply_snapshot(self, kind: str, scope: str, replica: str, at: float, counts: dict[str, int]) -> bool:
        """One replica's counts at `at` (kind `listeners`: per rendition of channel `scope`; `connections`: of room
        `scope`). Listening time: each snapshot's counts over the time since the replica's previous one (capped at
        MAX_GAP; one period for its first). Concurrent: the sum of the newest snapshots of the scope's replicas
        heard from within STALE, kept as the day's peak when higher. Two round trips: the replicas' snapshots read,
        then one statement that records the id and, when it was new, applies all of it (one consumer applies
        snapshots, one at a time: nothing changes them in between)."""
        event_id, moment = f"{kind}:{scope}:{replica}:{at!r}", _utc(at)
        rows = await self.pool.fetch(
            "SELECT replica, at, counts FROM analytics.replica_snapshots WHERE kind = $1 AND scope = $2"
            " AND (replica = $3 OR at > $4)", kind, scope, replica, moment - timedelta(seconds=STALE))
        previous = next((r["at"] for r in rows if r["replica"] == replica), None)
        if previous is not None and previous >= moment:
            # Older than what this replica already said (a late redelivery): its time is counted; only the id is new.
            return await _first_time(self.pool, event_id)
        gap = SNAPSHOT_EVERY if previous is None else min(MAX_GAP, at - previous.timestamp())
        seconds = [(rendition, hour, n * part) for rendition, n in counts.items() if n and kind == "listeners"
                   for hour, part in hourly_split(at - gap, at)]
        concurrent = sum(counts.values()) + sum(sum(json.loads(r["counts"]).values()) for r in rows
                                                if r["replica"] != replica)
        applied: int = await self.pool.fetchval(
            "WITH new AS (INSERT INTO analytics.applied_events (id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING id),"
            " newest AS (INSERT INTO analytics.replica_snapshots (kind, scope, replica, at, counts)"
            "  SELECT $2, $3, $4, $5, $6 FROM new ON CONFLICT (kind, scope, replica) DO UPDATE"
            "  SET at = EXCLUDED.at, counts = EXCLUDED.counts WHERE EXCLUDED.at > replica_snapshots.at),"
            " listened AS (INSERT INTO analytics.listener_seconds_hourly (channel, rendition, hour, seconds)"
            "  SELECT $3, x.rendition, x.hour, x.seconds"
            "  FROM new, unnest($7::text[], $8::timestamptz[], $9::float8[]) AS x(rendition, hour, seconds)"
            "  ON CONFLICT (channel, rendition, hour) DO UPDATE"
            "  SET seconds = listener_seconds_hourly.seconds + EXCLUDED.seconds),"
            " peaked AS (INSERT INTO analytics.daily_peaks (kind, scope, day, peak, at)"
            "  SELECT $2, $3, $10, $11, $5 FROM new ON CONFLICT (kind, scope, day) DO UPDATE"
            "  SET peak = EXCLUDED.peak, at = EXCLUDED.at WHERE EXCLUDED.peak > daily_peaks.peak)"
            " SELECT count(*) FROM new",
            event_id, kind, scope, replica, moment, json.dumps(counts), [r for r, _, _ in seconds],
            [h for _, h, _ in seconds], [n for _, _, n in seconds], moment.date(), concurrent)
        return applied == 1

    async def forget_applied(self, older_than: timedelta = APPLIED_RETENTION) -> int:
        """Drop the ids applied longer ago than any stream keeps its events."""
        status = await self.pool.execute(
            "DELETE FROM analytics.applied_events WHERE applied_at < now() - $1::interval", older_than)
        return int(status.split()[-1])


async def _first_time(pool: asyncpg.Pool, event_id: str) -> bool:
    return await pool.fetchval("INSERT INTO analytics.applied_events (id) VALUES ($1) ON CONFLICT DO NOTHING"
                               " RETURNING true", event_id) is not None


async def _patiently(apply: Callable[[], Awaitable[Any]]) -> Any:
    """`apply`, retried while the store is unreachable (for STORE_RETRY_SECONDS: then the event goes back to the
    stream); the consumer waits meanwhile, so events stay in stream order."""
    deadline = time.monotonic() + STORE_RETRY_SECONDS
    while True:
        try:
            return await apply()
        except _TRANSIENT as exc:
            if time.monotonic() >= deadline:
                raise
            log.warning("analytics store unavailable, retrying", extra={"error": repr(exc)})
            await asyncio.sleep(1.0)


# -- the consumer --------------------------------------------------------------------------------------
class AnalyticsConsumer:
    """Consumes while this replica holds the leader lock; `start` and `stop` follow the API's lifecycle."""

    def __init__(self, *, platform: str, nats_url: str, store_url: str, pool: asyncpg.Pool,
                 auth: bus.NatsAuth | None = None, rescan_seconds: float = 30.0, durable: str = DURABLE) -> None:
        self.platform = platform
        self.nats_url = nats_url
        self.store_url = store_url
        self.store = AnalyticsStore(pool)
        self.auth = auth
        self.rescan_seconds = rescan_seconds
        self.durable = durable  # another name: a new consumer, which reads the streams from the start (a replay)
        self.nc: Client | None = None
        self.leading = asyncio.Event()
        self.led = False  # led since the last failure (the retry delay starts over)
        self.task: asyncio.Task[None] | None = None
        self.rooms: dict[str, asyncio.Task[None]] = {}  # stream name -> its fetch task
        self.others: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="analytics-consumer")

    async def stop(self) -> None:
        # _run gives up when it sees it is being cancelled, even through a library's error (veza_core.tasks).
        if self.task is not None and not await tasks.stop(self.task):
            log.warning("analytics consumer did not stop", extra={"platform": self.platform})
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), 2.0)

    async def _run(self) -> None:
        while self.nc is None:
            try:
                self.nc = await bus.connect(self.nats_url, name=f"veza-api-analytics-{self.platform}", auth=self.auth)
            except Exception as exc:  # nats raises several unrelated types; retry whatever it was
                tasks.raise_if_cancelled(exc)
                log.warning("nats connect failed, retrying", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)
        delay = 1.0
        while True:
            try:
                await self._lead_when_possible()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the lock's connection lost, NATS refusing: give the lead up and try again
                tasks.raise_if_cancelled(exc)
                log.warning("analytics consumer stopped, retrying", extra={"error": repr(exc), "retry_in": delay})
            await asyncio.sleep(delay)
            delay = 1.0 if self.led else min(30.0, delay * 2)  # a store or NATS down for long: fewer attempts
            self.led = False

    async def _lead_when_possible(self) -> None:
        lock = await asyncpg.connect(self.store_url, timeout=10)
        try:
            while not await lock.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))",  # noqa: ASYNC110
                                          LEADER_LOCK_KEY, self.platform):
                await asyncio.sleep(min(5.0, self.rescan_seconds))  # another replica leads: ask again later
            log.info("analytics consumer leading", extra={"platform": self.platform})
            self.leading.set()
            self.led = True
            LEADING.set(1)
            try:
                await self._consume(lock)
            finally:
                self.leading.clear()
                LEADING.set(0)
                await self._unsubscribe()
        finally:
            with contextlib.suppress(Exception):  # closing the session releases the lock
                await asyncio.wait_for(lock.close(), 2.0)

    async def _consume(self, lock: asyncpg.Connection) -> None:
        assert self.nc is not None
        if not await self._store_migrated():  # a store of its own may have had no migration Job
            try:
                await migrate_store(self.store_url)
            except (OSError, asyncpg.PostgresError) as exc:  # the API's role may not create the schema
                log.warning("analytics store not migrated here", extra={"error": repr(exc)})
        js = self.nc.jetstream()
        p = self.platform
        channels = await events.ensure_channels_stream(js, p)
        stats = await events.ensure_stats_stream(js, p)
        self.others = [
            await events.durable_subscribe(js, stream=channels, subject=events.CHANNEL_NOWPLAYING.subject(p, "*"),
                                           durable=self.durable, handler=self._on_now_playing, max_deliver=100),
            await events.durable_subscribe(js, stream=stats, subject=events.CHANNEL_LISTENERS.subject(p, "*"),
                                           durable=f"{self.durable}-listeners", handler=self._on_listeners,
                                           max_deliver=100),
            await events.durable_subscribe(js, stream=stats, subject=events.ROOM_CONNECTIONS.subject(p, "*"),
                                           durable=f"{self.durable}-connections", handler=self._on_connections,
                                           max_deliver=100),
        ]
        last_pruned: float | None = None  # at the first round, then hourly
        while True:
            await self._scan_rooms(js)
            await self._measure_pending(js, channels, stats)
            if last_pruned is None or time.monotonic() - last_pruned > 3600:
                last_pruned = time.monotonic()
                forgotten = await self.store.forget_applied()
                if forgotten:
                    log.info("analytics event ids forgotten", extra={"deleted": forgotten})
            await asyncio.sleep(self.rescan_seconds)
            await asyncio.wait_for(lock.fetchval("SELECT 1"), 10)  # the lock is held as long as this session lives

    async def _store_migrated(self) -> bool:
        try:
            rows = await self.store.pool.fetch("SELECT version FROM analytics.schema_migrations")
        except asyncpg.PostgresError:  # no store yet, or one this role may not read: migrating says which
            return False
        done = {r["version"] for r in rows}
        return done >= {version for version, _ in migration_files(STORE_MIGRATIONS)}

    async def _unsubscribe(self) -> None:
        tasks = [*self.others, *self.rooms.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self.others, self.rooms = [], {}

    async def _scan_rooms(self, js: JetStreamContext) -> None:
        """A durable consumer per room stream (new rooms), none for the streams gone."""
        prefix = "VEZA_CHAT_" + re.sub(r"[^A-Za-z0-9_-]", "_", self.platform) + "_"
        found: dict[str, str] = {}
        offset = 0
        while True:
            page = await js.streams_info(offset)
            for info in page:
                name, subjects = info.config.name or "", info.config.subjects or []
                if name.startswith(prefix) and len(subjects) == 1:
                    found[name] = subjects[0]
            if len(page) < 256:  # the server's page size
                break
            offset += len(page)
        for name in set(self.rooms) - set(found):
            self.rooms.pop(name).cancel()
        for name, subject in found.items():
            room = subject.split(".")[3] if subject.count(".") == 4 else ""
            if name not in self.rooms and room and subject == events.ROOM_EVENTS.subject(self.platform, room):
                self.rooms[name] = await events.durable_subscribe(
                    js, stream=name, subject=subject, durable=self.durable, max_deliver=100,
                    handler=functools.partial(self._on_room_events, room))

    async def _measure_pending(self, js: JetStreamContext, channels: str, stats: str) -> None:
        consumers = [("nowplaying", channels, self.durable), ("listeners", stats, f"{self.durable}-listeners"),
                     ("connections", stats, f"{self.durable}-connections"),
                     *(("messages", name, self.durable) for name in self.rooms)]
        pending = dict.fromkeys(SOURCES, 0)
        for source, stream, durable in consumers:
            with contextlib.suppress(Exception):  # a room's stream deleted meanwhile
                info = await js.consumer_info(stream, durable)
                pending[source] += (info.num_pending or 0) + (info.num_ack_pending or 0)
        for source, n in pending.items():
            PENDING.labels(source).set(n)

    # -- handlers: a message is acked when they return -------------------------------------------------
    async def _on_room_events(self, room: str, msg: Msg) -> None:
        messages = message_events(msg.data)
        if messages is None:
            bus.reject(events.ROOM_EVENTS.kind, "malformed", subject=msg.subject)
            EVENTS.labels("messages", "rejected").inc()
            return
        new = await _patiently(lambda: self.store.apply_messages(room, messages))
        EVENTS.labels("messages", "applied").inc(new)
        EVENTS.labels("messages", "duplicate").inc(len(messages) - new)

    async def _on_now_playing(self, msg: Msg) -> None:
        event = _parse(events.CHANNEL_NOWPLAYING, events.NowPlaying, msg, "channel")
        if event is not None:
            _counted("nowplaying", await _patiently(lambda: self.store.apply_now_playing(event)))

    async def _on_listeners(self, msg: Msg) -> None:
        event = _parse(events.CHANNEL_LISTENERS, events.ListenerCounts, msg, "channel")
        if event is not None:
            _counted("listeners", await _patiently(lambda: self.store.apply_snapshot(
                "listeners", event.channel, event.replica, event.at, dict(event.listeners))))

    async def _on_connections(self, msg: Msg) -> None:
        event = _parse(events.ROOM_CONNECTIONS, events.RoomConnections, msg, "room")
        if event is not None:
            _counted("connections", await _patiently(lambda: self.store.apply_snapshot(
                "connections", event.room, event.replica, event.at, {"connections": event.connections})))


_SOURCE = {events.CHANNEL_NOWPLAYING.kind: "nowplaying", events.CHANNEL_LISTENERS.kind: "listeners",
           events.ROOM_CONNECTIONS.kind: "connections"}


def _parse(entry: events.Subject, model: type[M], msg: Msg, field: str) -> M | None:
    """The event, or None (counted) when it does not validate or names another channel or room than its subject."""
    event = events.parse(entry, model, msg.data)
    if event is not None and msg.subject.split(".")[3:4] != [getattr(event, field)]:
        bus.reject(entry.kind, "subject_mismatch", subject=msg.subject)
        event = None
    if event is None:
        EVENTS.labels(_SOURCE[entry.kind], "rejected").inc()
    return event


def _counted(source: str, applied: bool) -> None:
    EVENTS.labels(source, "applied" if applied else "duplicate").inc()


CONSUMER = web.AppKey("veza_api_analytics", AnalyticsConsumer)
