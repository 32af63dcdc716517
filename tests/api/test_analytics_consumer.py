"""The analytics consumer against real NATS JetStream and PostgreSQL: events published by the producers' own code
(a chat worker's group commits and connection counts, the stream worker's payloads) reach the store with the right
numbers; redelivery and a replay change nothing; malformed events are counted and dropped; a restart misses
nothing; of two replicas one consumes and the other takes over."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import nats as nats_client
import pytest
from nats.js.errors import NotFoundError

from tests.support.api import ADMIN_EMAIL, ServerFactory
from tests.support.chat import ISSUER, NATS_PASSWORDS, Chat, authorized_nats, publish_now_playing
from tests.support.db import fresh_database
from tests.support.waiting import wait_for
from veza_api.services import analytics
from veza_api.services.analytics import AnalyticsConsumer
from veza_core import events
from veza_core.auth import TokenIssuer
from veza_core.bus import NatsAuth
from veza_core.keys import KeySet, generate_signing_key, secret_data
from veza_local.services import NatsService, PostgresService, RedisService

TABLES = ("room_messages_hourly", "active_users_daily", "listener_seconds_hourly", "daily_peaks", "track_plays")


async def store(postgres: PostgresService) -> str:
    url = await fresh_database(postgres, "analytics", migrated=False)
    await analytics.migrate_store(url)
    return url


async def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every aggregate table, sorted: what a replay must reproduce."""
    conn = await asyncpg.connect(url)
    try:
        tables = {t: await conn.fetch(f"SELECT * FROM analytics.{t}") for t in TABLES}  # noqa: S608
        return {t: sorted(tuple(r) for r in rows) for t, rows in tables.items()}
    finally:
        await conn.close()


async def fetchval(url: str, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def counted(source: str, outcome: str) -> float:
    return analytics.EVENTS.labels(source, outcome)._value.get()


class Consumers:
    """Analytics consumers (each an API replica's) on one platform, stopped at the end."""

    def __init__(self, nats_url: str, platform: str) -> None:
        self.nats_url = nats_url
        self.platform = platform
        self.started: list[tuple[AnalyticsConsumer, asyncpg.Pool]] = []

    async def start(self, url: str, durable: str = analytics.DURABLE) -> AnalyticsConsumer:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
        assert pool is not None
        consumer = AnalyticsConsumer(platform=self.platform, nats_url=self.nats_url, store_url=url, pool=pool,
                                     rescan_seconds=0.5, durable=durable)
        consumer.start()
        self.started.append((consumer, pool))
        return consumer

    async def stop(self, consumer: AnalyticsConsumer) -> None:
        for c, pool in self.started:
            if c is consumer:
                await c.stop()
                try:  # a consumer that did not stop would hold its connections, and close() waits for them
                    await asyncio.wait_for(pool.close(), 10.0)
                except TimeoutError:
                    pool.terminate()
                    raise AssertionError("the consumer still held store connections after stop()") from None
        self.started = [(c, p) for c, p in self.started if c is not consumer]


@pytest.fixture
async def consumers(nats: NatsService) -> AsyncIterator[Consumers]:
    made = Consumers(nats.url, f"a{uuid.uuid4().hex[:8]}")
    yield made
    for consumer, _ in list(made.started):
        await made.stop(consumer)


@pytest.fixture
async def chat(tmp_path: Path, postgres: PostgresService, nats: NatsService, redis: RedisService,
               consumers: Consumers) -> AsyncIterator[Chat]:
    """A fresh room on the consumers' platform, its workers in this process."""
    key = generate_signing_key()
    for name, content in secret_data([key]).items():
        (tmp_path / name).write_text(content)
    room = Chat(tmp_path, tmp_path, TokenIssuer(KeySet.from_private_keys([key]), issuer=ISSUER),
                {"VEZA_DATABASE_URL": postgres.url, "VEZA_NATS_URL": nats.url, "VEZA_REDIS_URL": redis.url})
    yield room
    await room.close()


async def send(client: Any, *texts: str) -> None:
    for text in texts:
        await client.send({"type": "send", "cid": uuid.uuid4().hex, "text": text})
        await client.expect("ack")


async def messages_counted(url: str, room: str, expected: int) -> None:
    async def total() -> bool:
        n = await fetchval(url, "SELECT coalesce(sum(messages), 0) FROM analytics.room_messages_hourly"
                                " WHERE room = $1", room)
        return n == expected
    await wait_for(total, timeout=20, interval=0.2, message=f"{expected} messages of {room} counted")


async def stats_applied(consumers: Consumers, durable: str) -> None:
    """Wait until the consumer `durable` has applied every snapshot in the platform's stats stream."""
    nc = await nats_client.connect(consumers.nats_url)
    try:
        js = nc.jetstream()
        stream = await events.ensure_stats_stream(js, consumers.platform)

        async def applied() -> bool:
            infos = [await js.consumer_info(stream, f"{durable}-{source}") for source in ("connections", "listeners")]
            return all((i.num_pending or 0) + (i.num_ack_pending or 0) == 0 for i in infos)
        await wait_for(applied, timeout=20, interval=0.2, message=f"the stats stream applied by {durable}")
    finally:
        await nc.close()


async def test_messages_reach_the_store_once_and_a_replay_gives_the_same_numbers(
        postgres: PostgresService, consumers: Consumers, chat: Chat) -> None:
    worker = await chat.serve(chat.settings(platform=consumers.platform))
    alice = await chat.connect(worker, "alice")
    bob = await chat.connect(worker, "bob")
    await send(alice, "one", "two", "three")
    await send(bob, "four")
    await bob.send({"type": "edit", "cid": "e1", "seq": 4, "text": "FOUR"})  # not a message: not counted
    await bob.expect("ack")

    url = await store(postgres)
    rejected = counted("messages", "rejected")
    await consumers.start(url)
    await messages_counted(url, chat.room, 4)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT hour, messages FROM analytics.room_messages_hourly WHERE room = $1", chat.room)
        # Sent within the test: this hour, or the one before when the test straddles the hour.
        assert all(r["hour"] in (hour, hour - timedelta(hours=1)) for r in rows)
        users = {r["user_id"] for r in await conn.fetch("SELECT user_id FROM analytics.active_users_daily")}
        assert users == {"alice", "bob"}
        # The messages' ids (a connection snapshot of the worker is an applied event too, when one falls in here).
        ids = {r["id"] for r in await conn.fetch("SELECT id FROM analytics.applied_events WHERE id LIKE 'message:%'")}
    finally:
        await conn.close()
    conn = await asyncpg.connect(postgres.url)  # the chat's own record of the events: their seqs and ids
    try:
        stored = await conn.fetch("SELECT seq, id FROM chat_events WHERE room = $1 AND kind = 'message'", chat.room)
        assert ids == {f"message:{chat.room}:{r['seq']}:{r['id']}" for r in stored}
        assert sorted(r["seq"] for r in stored) == [1, 2, 3, 4]
    finally:
        await conn.close()
    assert counted("messages", "rejected") == rejected

    # The worker publishes its connections every 5 s: stopped, and its last snapshot applied, the streams stay
    # as they are while the replays below read them.
    await chat.close()
    await stats_applied(consumers, analytics.DURABLE)
    # A new consumer reads the streams from the start: into the same store it changes nothing...
    before = await snapshot(url)
    duplicates = counted("messages", "duplicate")
    await consumers.start(url, durable="replay")  # waits for the lock, which the first consumer holds
    await consumers.stop(consumers.started[0][0])
    await wait_for(lambda: counted("messages", "duplicate") >= duplicates + 4, timeout=20, interval=0.2,
                   message="the replay read every message again")
    assert await snapshot(url) == before

    # ...and into an empty store it gives the same numbers.
    fresh = await store(postgres)
    await consumers.start(fresh, durable="replay-fresh")
    await messages_counted(fresh, chat.room, 4)
    assert await snapshot(fresh) == before


async def test_a_restart_mid_stream_misses_nothing_and_counts_nothing_twice(
        postgres: PostgresService, consumers: Consumers, chat: Chat) -> None:
    url = await store(postgres)
    worker = await chat.serve(chat.settings(platform=consumers.platform))
    alice = await chat.connect(worker, "alice")
    first = await consumers.start(url)
    await send(alice, *(f"m{i}" for i in range(5)))
    await messages_counted(url, chat.room, 5)
    await consumers.stop(first)
    await send(alice, *(f"n{i}" for i in range(7)))  # while no consumer runs
    await consumers.start(url)
    await messages_counted(url, chat.room, 12)
    await send(alice, "last")
    await messages_counted(url, chat.room, 13)
    # Only the messages' ids: the worker's connection snapshots are applied events too, when one falls in the test.
    assert await fetchval(url, "SELECT count(*) FROM analytics.applied_events WHERE id LIKE 'message:%'") == 13


async def test_now_playing_counts_plays_once_per_event(postgres: PostgresService, consumers: Consumers,
                                                      nats: NatsService) -> None:
    url = await store(postgres)
    await consumers.start(url)
    p = consumers.platform
    t0 = time.time() - 600
    await publish_now_playing(nats.url, "radio", "Song A", platform=p, started_at=t0, track_id="t-a")
    await publish_now_playing(nats.url, "radio", "Song B", platform=p, started_at=t0 + 200)
    await publish_now_playing(nats.url, "radio", "Song A", platform=p, started_at=t0 + 400, track_id="t-a")
    # The same track start stated again past the stream's deduplication (another Nats-Msg-Id): one play still.
    await publish_now_playing(nats.url, "radio", "Song A", platform=p, started_at=t0 + 400, msg_id="again",
                              track_id="t-a")

    async def plays() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(url)
        try:
            return [tuple(r) for r in await conn.fetch(
                "SELECT title, track_id, plays, last_played FROM analytics.track_plays WHERE channel = 'radio'"
                " ORDER BY title")]
        finally:
            await conn.close()

    await wait_for(lambda: counted("nowplaying", "duplicate") > 0 and plays(), timeout=20, interval=0.2,
                   message="now-playing applied")
    await wait_for(lambda: _equal(plays(), [
        ("Song A", "t-a", 2, datetime.fromtimestamp(t0 + 400, UTC)),
        ("Song B", None, 1, datetime.fromtimestamp(t0 + 200, UTC))]), timeout=20, interval=0.2, message="plays")


async def _equal(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def publish_snapshots(nats_url: str, snapshots: list[events.Event], platform: str) -> None:
    """Counts published the way the workers publish them: core NATS, kept by the platform's stats stream."""
    nc = await nats_client.connect(nats_url)
    try:
        await events.ensure_stats_stream(nc.jetstream(), platform)
        for s in snapshots:
            entry = events.CHANNEL_LISTENERS if isinstance(s, events.ListenerCounts) else events.ROOM_CONNECTIONS
            name = s.channel if isinstance(s, events.ListenerCounts) else s.room  # type: ignore[attr-defined]
            await nc.publish(entry.subject(platform, name), events.payload(s))
        await nc.flush()
    finally:
        await nc.close()


async def test_listening_time_is_integrated_per_hour_and_peaks_sum_the_replicas(
        postgres: PostgresService, consumers: Consumers, nats: NatsService) -> None:
    url = await store(postgres)
    rejected = counted("listeners", "rejected")
    await consumers.start(url)
    hour = datetime(2026, 3, 1, 12, tzinfo=UTC).timestamp()
    t0 = hour - 3

    def counts(replica: str, at: float, **listeners: int) -> events.ListenerCounts:
        return events.ListenerCounts(v=1, channel="radio", replica=replica, listeners=listeners, at=at)

    await publish_snapshots(nats.url, [
        counts("a", t0, hi=2, lo=1),        # first of a: one period (5 s) before it, in hour 11
        counts("b", t0 + 2, hi=3),          # first of b: 5 s, in hour 11; a + b = 6 listeners, the peak
        counts("a", t0 + 5, hi=2, lo=1),    # 5 s since a's previous: 3 s in hour 11, 2 s in hour 12
        counts("a", t0 + 65, hi=1),         # a minute of silence counts 15 s; b is gone from the sum by then
        counts("a", t0 + 4, hi=9),          # late, older than a's newest: that time is already counted
        events.ListenerCounts(v=1, channel="elsewhere", replica="a", listeners={"hi": 50}, at=t0),
    ], consumers.platform)
    nc = await nats_client.connect(nats.url)  # on radio's subject: one not JSON, one about another channel
    try:
        await nc.publish(events.CHANNEL_LISTENERS.subject(consumers.platform, "radio"), b'{"v":1,"channel":"radio"')
        await nc.publish(events.CHANNEL_LISTENERS.subject(consumers.platform, "radio"), events.payload(
            events.ListenerCounts(v=1, channel="other", replica="a", listeners={"hi": 50}, at=t0)))
        await nc.flush()
    finally:
        await nc.close()

    async def seconds() -> dict[tuple[str, int], float]:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch("SELECT rendition, hour, seconds FROM analytics.listener_seconds_hourly"
                                    " WHERE channel = 'radio'")
            return {(r["rendition"], r["hour"].hour): round(r["seconds"], 6) for r in rows}
        finally:
            await conn.close()

    expected = {("hi", 11): 2 * 5 + 3 * 5 + 2 * 3, ("hi", 12): 2 * 2 + 1 * 15, ("lo", 11): 1 * 5 + 1 * 3,
                ("lo", 12): 1 * 2}
    await wait_for(lambda: _equal(seconds(), expected), timeout=20, interval=0.2, message="listening seconds")
    conn = await asyncpg.connect(url)
    try:
        peaks = [tuple(r) for r in await conn.fetch("SELECT scope, day, peak, at FROM analytics.daily_peaks"
                                                    " WHERE kind = 'listeners' ORDER BY scope")]
    finally:
        await conn.close()
    assert peaks == [("elsewhere", date(2026, 3, 1), 50, datetime.fromtimestamp(t0, UTC)),
                     ("radio", date(2026, 3, 1), 6, datetime.fromtimestamp(t0 + 2, UTC))]
    await wait_for(lambda: counted("listeners", "rejected") >= rejected + 2, timeout=10, interval=0.1,
                   message="the malformed and the mismatched snapshots counted as rejected")


async def test_chat_workers_connection_counts_make_the_daily_peak(
        postgres: PostgresService, consumers: Consumers, chat: Chat) -> None:
    url = await store(postgres)
    await consumers.start(url)
    worker = await chat.serve(chat.settings(platform=consumers.platform))
    await chat.connect(worker, "alice")
    await chat.connect(worker, "bob")
    await chat.connect(worker, "bob")

    async def peak() -> Any:
        return await fetchval(url, "SELECT peak FROM analytics.daily_peaks WHERE kind = 'connections' AND scope = $1",
                              chat.room)
    assert await wait_for(peak, timeout=20, interval=0.2, message="a connections peak") == 3


async def test_malformed_room_events_are_counted_and_dropped(postgres: PostgresService, consumers: Consumers,
                                                             chat: Chat, nats: NatsService) -> None:
    url = await store(postgres)
    worker = await chat.serve(chat.settings(platform=consumers.platform))
    alice = await chat.connect(worker, "alice")
    await send(alice, "before")
    subject = events.ROOM_EVENTS.subject(consumers.platform, chat.room)
    nc = await nats_client.connect(nats.url)
    try:
        js = nc.jetstream()

        async def stream_made() -> bool:  # by the worker, in the background: a publish before it has no responder
            try:
                return bool(await js.find_stream_name_by_subject(subject))
            except NotFoundError:
                return False
        await wait_for(stream_made, timeout=20, interval=0.2, message=f"the stream of {chat.room}")
        for bad in (b"not a worker id\n1 1 {}", b"0123456789ab\n7 12 {\"type\":\"event\",\"seq\":8}",
                    b"0123456789ab\n9 - {\"type\":\"event\",\"seq\":9,\"kind\":\"message\",\"author\":{}}"):
            await js.publish(subject, bad)
    finally:
        await nc.close()
    await send(alice, "after")
    rejected = counted("messages", "rejected")
    await consumers.start(url)
    await messages_counted(url, chat.room, 2)
    assert counted("messages", "rejected") == rejected + 3


async def test_one_replica_consumes_and_the_other_takes_over(postgres: PostgresService, consumers: Consumers,
                                                             chat: Chat) -> None:
    url = await fresh_database(postgres, "analytics", migrated=False)  # no migration Job: the leader migrates it
    first = await consumers.start(url)
    second = await consumers.start(url)
    await wait_for(lambda: first.leading.is_set() or second.leading.is_set(), timeout=10, message="a leader")
    leader, other = (first, second) if first.leading.is_set() else (second, first)
    worker = await chat.serve(chat.settings(platform=consumers.platform))
    alice = await chat.connect(worker, "alice")
    await send(alice, "a", "b")
    await messages_counted(url, chat.room, 2)
    assert not other.leading.is_set() and not other.rooms

    await consumers.stop(leader)
    await wait_for(other.leading.is_set, timeout=15, message="the other replica leading")
    await send(alice, "c")
    await messages_counted(url, chat.room, 3)


async def test_signed_in_as_the_api_and_chat_users_analytics_works_end_to_end(
        postgres: PostgresService, redis: RedisService, tmp_path: Path, consumers: Consumers) -> None:
    """Against a NATS that admits only the users of examples/nats/authorization.conf: a chat worker signed in as the
    chat user publishes its events and connection counts, the consumer signed in as the API user applies them."""
    secured = authorized_nats(tmp_path / "secured").start()
    key = generate_signing_key()
    for name, content in secret_data([key]).items():
        (tmp_path / name).write_text(content)
    chat = Chat(tmp_path, tmp_path, TokenIssuer(KeySet.from_private_keys([key]), issuer=ISSUER),
                {"VEZA_DATABASE_URL": postgres.url, "VEZA_NATS_URL": secured.url, "VEZA_REDIS_URL": redis.url,
                 "VEZA_NATS_USER": "veza-chat", "VEZA_NATS_PASSWORD": NATS_PASSWORDS["VEZA_NATS_CHAT_PASSWORD"]})
    try:
        url = await store(postgres)
        pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
        assert pool is not None
        auth = NatsAuth(nats_user="veza-api", nats_password=NATS_PASSWORDS["VEZA_NATS_API_PASSWORD"])
        consumer = AnalyticsConsumer(platform=consumers.platform, nats_url=secured.url, store_url=url, pool=pool,
                                     auth=auth, rescan_seconds=0.5)
        consumer.start()
        consumers.started.append((consumer, pool))
        worker = await chat.worker(VEZA_PLATFORM=consumers.platform)
        alice = await chat.connect(worker, "alice")
        await send(alice, "hello", "again")
        await messages_counted(url, chat.room, 2)

        async def peak() -> Any:
            return await fetchval(url, "SELECT peak FROM analytics.daily_peaks WHERE kind = 'connections'"
                                       " AND scope = $1", chat.room)
        assert await wait_for(peak, timeout=20, interval=0.2, message="a connections peak") == 1
        assert "Authorization Violation" not in worker.log()
    finally:
        await chat.close()
        for c, _ in list(consumers.started):
            await consumers.stop(c)
        secured.stop()


async def test_what_the_producers_publish_is_served_by_the_admin_routes(
        postgres: PostgresService, nats: NatsService, make_api: ServerFactory, consumers: Consumers,
        chat: Chat) -> None:
    """End to end: a chat worker's messages and connections, a channel's plays and listener counts, through the
    consumer an API server runs, to the admin analytics routes of that server."""
    url = await store(postgres)
    p = consumers.platform
    server = await make_api(platform=p, nats_url=nats.url, analytics_database_url=url, analytics_rescan_seconds=0.5)
    tokens = await server.client.register_and_login(ADMIN_EMAIL, name="Root")
    admin = server.client.as_user(tokens["access_token"])
    worker = await chat.serve(chat.settings(platform=p))
    alice, bob = await chat.connect(worker, "alice"), await chat.connect(worker, "bob")
    await send(alice, "one", "two")
    await send(bob, "three")
    now = time.time()
    await publish_now_playing(nats.url, "radio", "Song A", platform=p, started_at=now - 60, track_id="t-a")
    await publish_snapshots(nats.url, [
        events.ListenerCounts(v=1, channel="radio", replica="a", listeners={"mp3": 6}, at=now - 10),
        events.ListenerCounts(v=1, channel="radio", replica="a", listeners={"mp3": 6}, at=now - 5)], p)
    base = "/api/v1/admin/analytics"

    async def figure(route: str, key: str, **params: str) -> list[dict[str, Any]]:
        got = await admin.get(f"{base}/{route}", **params)
        assert got.status == 200, got.body
        return list(got.body[key])

    async def messages() -> list[dict[str, Any]]:
        return [s for s in await figure("messages", "series", room=chat.room) if s["messages"]]

    series = await wait_for(lambda: _total(messages(), "messages", 3), timeout=30, interval=0.3,
                            message="3 messages served")
    assert {s["room"] for s in series} == {chat.room}
    assert all(s["hour"].endswith("+00:00") for s in series)
    days = await figure("active-users", "days")
    assert days[-1]["users"] >= 2  # alice and bob (the shared database's other tests may add users of their own)
    listening = await wait_for(lambda: figure("listening", "series", channel="radio"), timeout=20, interval=0.3,
                               message="listening served")
    assert sum(s["minutes"] for s in listening) == pytest.approx(6 * 10 / 60)  # two snapshots of 6, 5 s each
    tracks = await wait_for(lambda: figure("top-tracks", "tracks", channel="radio"), timeout=20, interval=0.3,
                            message="plays served")
    assert [(t["title"], t["track_id"], t["plays"]) for t in tracks] == [("Song A", "t-a", 1)]
    peaks = await wait_for(lambda: figure("peaks", "peaks", kind="connections"), timeout=20, interval=0.3,
                           message="a connections peak served")
    assert [(x["scope"], x["peak"]) for x in peaks if x["scope"] == chat.room] == [(chat.room, 2)]
    listeners = await figure("peaks", "peaks", kind="listeners")
    assert [(x["scope"], x["peak"]) for x in listeners] == [("radio", 6)]


async def _total(rows: Any, key: str, expected: int) -> Any:
    found = await rows
    return found if sum(r[key] for r in found) == expected else None


async def test_the_leader_forgets_ids_older_than_any_stream_keeps(postgres: PostgresService,
                                                                  consumers: Consumers) -> None:
    url = await store(postgres)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("INSERT INTO analytics.applied_events (id, applied_at) VALUES"
                           " ('message:old:1:x', now() - interval '8 days'),"
                           " ('message:recent:1:y', now() - interval '6 days')")
    finally:
        await conn.close()
    await consumers.start(url)  # prunes at its first round, then hourly

    async def kept() -> Any:
        ids = await fetchval(url, "SELECT array_agg(id) FROM analytics.applied_events")
        return ids == ["message:recent:1:y"]
    await wait_for(kept, timeout=15, interval=0.2, message="the 8-day-old id forgotten, the 6-day-old one kept")
