"""Analytics benchmark: events per second the analytics consumer applies, against a no-op consumer of the same
events in the same run.

    .venv/bin/python bench/analytics_bench.py            # ~1-2 minutes; progress on stderr
    .venv/bin/python bench/analytics_bench.py --quick    # smaller, for a smoke run

Starts PostgreSQL and NATS locally (veza_local.services). Publishes into JetStream, in the producers' wire formats:
message events in 8 rooms' streams (group commits of `--batch` events, as a chat worker's fan-out publishes them,
and the same number again one event per message: a quiet room's shape), listener counts of 4 channels (2 replicas,
3 renditions) and connection counts of the 8 rooms into the stats stream, and now-playing events. Then, per shape:

- baseline: the same streams read by no-op durable consumers through `durable_subscribe` (fetch, ack), the floor
  any consumer pays for the bus;
- analytics: `AnalyticsConsumer` into an empty store (each event's id recorded and its aggregate applied in one
  transaction);
- replay: a second `AnalyticsConsumer` with a new durable name over the same store (every id already known).

Events per second = events / wall time until the last one is acknowledged (counted by the store, and by the
no-op handlers). `ratio_to_noop` = analytics / baseline. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "workloads")]

import asyncpg  # noqa: E402
import nats  # noqa: E402
from nats.aio.msg import Msg  # noqa: E402

from veza_api.services import analytics  # noqa: E402
from veza_core import events  # noqa: E402
from veza_local.services import NatsService, PostgresService  # noqa: E402

ROOMS = 8
CHANNELS = 4
REPLICAS = 2
RENDITIONS = ("hi", "mid", "lo")


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def room_stream(platform: str, room: str) -> str:
    return f"VEZA_CHAT_{platform}_{room}"


async def publish(nats_url: str, platform: str, messages: int, batch: int) -> dict[str, int]:
    """The events of one shape; returns how many of each source (message events, snapshots, now-playing)."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    rng = random.Random(7)
    start = time.time() - 3600
    worker = "0123456789ab"
    try:
        for r in range(ROOMS):
            room = f"room{r}"
            subject = events.ROOM_EVENTS.subject(platform, room)
            await js.add_stream(name=room_stream(platform, room), subjects=[subject])
        pending = []
        seqs = [0] * ROOMS
        sent = 0
        while sent < messages:
            r = sent // batch % ROOMS
            lines = [worker]
            for _ in range(min(batch, messages - sent)):
                seqs[r] += 1
                seq, ts = seqs[r], int((start + sent * 0.05) * 1000)
                frame = json.dumps({"type": "event", "seq": seq, "kind": "message", "id": f"{r}-{seq}",
                                    "author": {"id": f"user{rng.randrange(500)}", "name": "U"}, "ts": ts,
                                    "text": "hello there"}, separators=(",", ":"))
                lines.append(f"{seq} {ts} {frame}")
                sent += 1
            subject = events.ROOM_EVENTS.subject(platform, f"room{r}")
            pending.append(js.publish(subject, "\n".join(lines).encode()))
            if len(pending) >= 256:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)

        await events.ensure_stats_stream(js, platform)
        snapshots = messages // 10
        for i in range(snapshots):
            at = start + (i // (CHANNELS * REPLICAS + ROOMS)) * 5.0
            k = i % (CHANNELS * REPLICAS + ROOMS)
            payload: events.Event
            if k < CHANNELS * REPLICAS:
                channel = f"ch{k // REPLICAS}"
                payload = events.ListenerCounts(v=1, channel=channel, replica=f"rep{k % REPLICAS}",
                                                listeners={n: rng.randrange(100) for n in RENDITIONS}, at=at)
                subject = events.CHANNEL_LISTENERS.subject(platform, channel)
            else:
                room = f"room{k - CHANNELS * REPLICAS}"
                payload = events.RoomConnections(v=1, room=room, replica=f"{k:012x}", connections=rng.randrange(300),
                                                 at=at)
                subject = events.ROOM_CONNECTIONS.subject(platform, room)
            await nc.publish(subject, events.payload(payload))
        await nc.flush()

        await events.ensure_channels_stream(js, platform)
        plays = messages // 100
        for i in range(plays):
            channel = f"ch{i % CHANNELS}"
            started = start + i * 180
            np = events.NowPlaying(v=1, id=f"{channel}:{round(started * 1000)}", channel=channel,
                                   title=f"Track {rng.randrange(50)}", started_at=started, at=started)
            await js.publish(events.CHANNEL_NOWPLAYING.subject(platform, channel), events.payload(np))
        # Core publishes are not acknowledged: count what the stats stream holds (a loaded server may drop some).
        kept = (await js.stream_info(events.stats_stream(platform))).state.messages
        if kept != snapshots:
            say(f"the stats stream kept {kept} of {snapshots} snapshots")
        return {"messages": messages, "snapshots": kept, "nowplaying": plays}
    finally:
        await nc.close()


async def noop(nats_url: str, platform: str, total_msgs: int) -> float:
    """Seconds for no-op durable consumers (one per stream and source, like the analytics consumer's) to fetch and
    ack every JetStream message of the shape."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    done = asyncio.Event()
    count = 0

    async def handler(msg: Msg) -> None:
        nonlocal count
        count += 1
        if count >= total_msgs:
            done.set()

    p = platform
    start = time.perf_counter()
    sources = [(room_stream(p, f"room{r}"), events.ROOM_EVENTS.subject(p, f"room{r}")) for r in range(ROOMS)]
    sources += [(events.channels_stream(p), events.CHANNEL_NOWPLAYING.subject(p, "*")),
                (events.stats_stream(p), events.CHANNEL_LISTENERS.subject(p, "*")),
                (events.stats_stream(p), events.ROOM_CONNECTIONS.subject(p, "*"))]
    tasks = [await events.durable_subscribe(js, stream=s, subject=subj, durable=f"noop{i}", handler=handler)
             for i, (s, subj) in enumerate(sources)]
    await asyncio.wait_for(done.wait(), 120)
    elapsed = time.perf_counter() - start
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await nc.close()
    return elapsed


def applied_so_far() -> float:
    return sum(analytics.EVENTS.labels(s, o)._value.get() for s in analytics.SOURCES
               for o in ("applied", "duplicate", "rejected"))


async def consume(nats_url: str, platform: str, url: str, durable: str, total_events: int) -> float:
    """Seconds for an AnalyticsConsumer (a new durable) to apply (or find applied) every event of the shape."""
    pool = await asyncpg.create_pool(url, min_size=2, max_size=10)
    assert pool is not None
    before = applied_so_far()
    consumer = analytics.AnalyticsConsumer(platform=platform, nats_url=nats_url, store_url=url, pool=pool,
                                           rescan_seconds=0.2, durable=durable)
    start = time.perf_counter()
    consumer.start()
    try:
        seen, progress_at = 0.0, time.monotonic()
        while (done := applied_so_far() - before) < total_events:
            if done > seen:
                seen, progress_at = done, time.monotonic()
            elif time.monotonic() - progress_at > 60:
                raise RuntimeError(f"{durable}: no progress for 60 s at {done:.0f} of {total_events} events")
            await asyncio.sleep(0.02)
        return time.perf_counter() - start
    finally:
        await consumer.stop()
        await pool.close()


async def shape(pg: PostgresService, nats_svc: NatsService, name: str, messages: int, batch: int) -> dict[str, Any]:
    platform = f"bench{name}"
    say(f"[{name}] publishing {messages} message events (batch {batch}) and the rest")
    counts = await publish(nats_svc.url, platform, messages, batch)
    total_events = sum(counts.values())
    total_msgs = -(-messages // batch) + counts["snapshots"] + counts["nowplaying"]
    say(f"[{name}] {total_events} events in {total_msgs} JetStream messages; baseline: no-op consumers")
    base = await noop(nats_svc.url, platform, total_msgs)
    conn = await asyncpg.connect(pg.url)
    await conn.execute(f"CREATE DATABASE {platform}")
    await conn.close()
    url = pg.url.rsplit("/", 1)[0] + f"/{platform}"
    await analytics.migrate_store(url)
    say(f"[{name}] baseline {base:.2f} s; analytics consumer into an empty store")
    applied = await consume(nats_svc.url, platform, url, "analytics", total_events)
    say(f"[{name}] analytics {applied:.2f} s; replay (every id known)")
    replay = await consume(nats_svc.url, platform, url, "replay", total_events)
    say(f"[{name}] replay {replay:.2f} s")
    return {"events": total_events, "jetstream_messages": total_msgs, **counts,
            "noop_events_per_s": round(total_events / base), "analytics_events_per_s": round(total_events / applied),
            "replay_events_per_s": round(total_events / replay), "ratio_to_noop": round(base / applied, 3)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="analytics-bench-"))
    say(f"services in {work}")
    pg, nats_svc = PostgresService(work), NatsService(work)
    results: dict[str, Any] = {"loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
    for svc in (pg, nats_svc):
        svc.start()
    try:
        n = 2000 if args.quick else args.messages
        results[f"batch{args.batch}"] = await shape(pg, nats_svc, f"b{args.batch}", n, args.batch)
        results["batch1"] = await shape(pg, nats_svc, "b1", n // 4, 1)
    finally:
        for svc in (nats_svc, pg):
            svc.stop()
        shutil.rmtree(work, ignore_errors=True)
    results["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    big, one = results[f"batch{args.batch}"], results["batch1"]
    results["summary"] = {
        "analytics_events_per_s_batched": big["analytics_events_per_s"],
        "analytics_events_per_s_single": one["analytics_events_per_s"],
        "ratio_to_noop_batched": big["ratio_to_noop"], "ratio_to_noop_single": one["ratio_to_noop"],
    }
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2000 message events: a smoke run")
    parser.add_argument("--messages", type=int, default=40_000, help="message events of the batched shape")
    parser.add_argument("--batch", type=int, default=20, help="events per group commit in the batched shape")
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
