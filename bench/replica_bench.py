"""Read-replica benchmark: chat history pages per second served from a streaming replica vs from the primary.

    .venv/bin/python bench/replica_bench.py            # ~1.5 minutes; progress on stderr
    .venv/bin/python bench/replica_bench.py --quick    # shorter phases, for a smoke run

Starts a PostgreSQL primary and a hot standby of it (`pg_basebackup -R`, the tests' StandbyService), seeds one room
with 20,000 messages (a reaction on every tenth), then reads history pages through the chat store's read path (what
the REST route and the socket's `history` frame run: the page, its reactions, and the room's last seq for REST)
with the same pages (a fixed random sequence of `before` seqs, 50 events each) at the same concurrency in each phase:

- `primary`: a store without a read endpoint (today's behaviour: everything on the primary);
- `replica`: the same store with the standby as its read endpoint;
- `primary_writes` / `replica_writes`: the same, while a writer commits 20 messages a second to the room through
  another store (its commits reach the reader as they would over fan-out: `Store.wrote()`), so the replica rule
  (replay LSN >= the primary's LSN after the newest write) is exercised; `reads_on_replica_fraction` says how
  many reads it let through. The primary commits synchronously, as in production.

Each phase runs twice, alternating (primary, replica, primary, replica, ...), and the figures are the sums. The
primary's CPU is the user+system time of its postmaster and every child, from /proc, over each phase:
`primary_cpu_saved` is 1 - (the primary's CPU per page in the replica phase) / (per page in the primary phase).
The reads also cost this benchmark's own process and the standby; both are reported. The last stdout line is one
JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "workloads"), str(ROOT)]

from prometheus_client import REGISTRY  # noqa: E402
from tests.support.db import StandbyService  # noqa: E402

from veza_chat.store import Op, Store  # noqa: E402
from veza_core.db import migrate  # noqa: E402
from veza_local.services import PostgresService  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
ROOM = "bench"
PAGE = 50


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def cpu_of_tree(root: int) -> dict[int, int]:
    """Ticks of user+system CPU of `root` and its direct children (a postmaster and its backends), by pid."""
    found: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        if pid == root or ppid == root:
            found[pid] = int(fields[11]) + int(fields[12])
    return found


def reads_by_target() -> dict[str, float]:
    """veza_db_reads_total of this process, summed by target."""
    totals: dict[str, float] = {}
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name == "veza_db_reads_total":
                totals[sample.labels["target"]] = totals.get(sample.labels["target"], 0.0) + sample.value
    return totals


def cpu_between(before: dict[int, int], after: dict[int, int]) -> float:
    return sum(ticks - before.get(pid, 0) for pid, ticks in after.items()) / TICK


async def seed(store: Store, messages: int) -> None:
    done = 0
    while done < messages:
        n = min(500, messages - done)
        await store.append([Op("message", f"u{(done + i) % 50}", "User", f"seed-{done + i}",
                               body=f"message {done + i} " + "x" * 80) for i in range(n)])
        done += n
    async with store._pool().acquire() as conn:
        await conn.execute("INSERT INTO chat_reactions (room, seq, user_id, emoji) SELECT $1, seq, 'u1', '+1'"
                           " FROM chat_events WHERE room = $1 AND seq % 10 = 0 ON CONFLICT DO NOTHING", ROOM)


async def read_pages(store: Store, befores: list[int], concurrency: int, seconds: float) -> int:
    """Pages read in `seconds` by `concurrency` readers walking `befores` (each from its own offset)."""
    stop = time.monotonic() + seconds
    counts = [0] * concurrency

    async def reader(k: int) -> None:
        i = k * 997
        while time.monotonic() < stop:
            before = befores[i % len(befores)]
            events = await store.events_before(before, PAGE + 1, replica=True)
            await store.with_reactions(events[-PAGE:], replica=True)
            await store.last_seq(replica=True)
            counts[k] += 1
            i += 1

    await asyncio.gather(*(reader(k) for k in range(concurrency)))
    return sum(counts)


async def writer(store: Store, reader: Store, per_second: float, stop: asyncio.Event) -> int:
    n = 0
    while not stop.is_set():
        await store.append([Op("message", "w", "Writer", f"w-{time.time_ns()}-{n}", body=f"live {n}")])
        reader.wrote()  # what the reader's fan-out would tell it
        n += 1
        await asyncio.sleep(1 / per_second)
    return n


async def phase(name: str, store: Store, primary: PostgresService, standby: StandbyService, befores: list[int],
                concurrency: int, seconds: float, write_store: Store | None) -> dict[str, float]:
    assert primary.process is not None and standby.process is not None
    stop = asyncio.Event()
    writing = asyncio.create_task(writer(write_store, store, 20, stop)) if write_store else None
    await asyncio.sleep(0.2)
    p0, s0, me0 = cpu_of_tree(primary.process.pid), cpu_of_tree(standby.process.pid), os.times()
    started = time.monotonic()
    pages = await read_pages(store, befores, concurrency, seconds)
    elapsed = time.monotonic() - started
    p1, s1, me1 = cpu_of_tree(primary.process.pid), cpu_of_tree(standby.process.pid), os.times()
    stop.set()
    if writing is not None:
        await writing
    figures = {"pages": pages, "seconds": elapsed, "primary_cpu": cpu_between(p0, p1),
               "standby_cpu": cpu_between(s0, s1), "client_cpu": (me1.user + me1.system) - (me0.user + me0.system)}
    say(f"  {name}: {pages / elapsed:8.0f} pages/s, primary CPU {figures['primary_cpu']:.2f} s, "
        f"standby CPU {figures['standby_cpu']:.2f} s, this process {figures['client_cpu']:.2f} s")
    return figures


async def run(seconds: float, concurrency: int, messages: int) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="veza-replica-bench-"))
    primary = PostgresService(base / "primary").start()
    standby: StandbyService | None = None
    stores: list[Store] = []
    try:
        # Production commits synchronously: the WAL of a commit leaves for the standby at once (this dev server's
        # default, off, lets it wait for the WAL writer, up to 200 ms, which would keep the replica "behind").
        primary.execute("ALTER SYSTEM SET synchronous_commit = on")
        primary.execute("SELECT pg_reload_conf()")
        await migrate(primary.url)
        say(f"seeding {messages} messages")
        seeder = Store(primary.url, ROOM)
        stores.append(seeder)
        await seeder.open(declare=False)
        await seed(seeder, messages)
        standby = StandbyService(base / "standby", primary).start()
        await standby.caught_up(timeout=60)
        say(f"standby on port {standby.port}, caught up")
        on_primary = Store(primary.url, ROOM)
        on_replica = Store(primary.url, ROOM, read_url=standby.url)
        stores += [on_primary, on_replica]
        for store in (on_primary, on_replica):
            await store.open(declare=False)
        rng = random.Random(19)
        befores = [rng.randint(PAGE + 1, messages) for _ in range(5000)]
        say("warm-up")
        for store in (on_primary, on_replica):
            await read_pages(store, befores, concurrency, seconds / 2)
        totals: dict[str, dict[str, float]] = {}
        for round_ in range(2):
            say(f"round {round_ + 1}")
            for name, store, writes in (("primary", on_primary, False), ("replica", on_replica, False),
                                        ("primary_writes", on_primary, True), ("replica_writes", on_replica, True)):
                routed = reads_by_target()
                got = await phase(name, store, primary, standby, befores, concurrency, seconds,
                                  seeder if writes else None)
                if store is on_replica:
                    after = reads_by_target()
                    got["routed_replica"] = after.get("replica", 0) - routed.get("replica", 0)
                    got["routed_total"] = sum(after.values()) - sum(routed.values())
                acc = totals.setdefault(name, {})
                for key, value in got.items():
                    acc[key] = acc.get(key, 0.0) + value
        router = on_replica.router
        assert router is not None
        result: dict[str, Any] = {"concurrency": concurrency, "page_events": PAGE, "seconds_per_phase": seconds,
                                  "room_messages": messages, "cpus": os.cpu_count()}
        for name, t in totals.items():
            result[name] = {
                "pages_per_s": round(t["pages"] / t["seconds"], 1),
                "primary_cpu_ms_per_page": round(1000 * t["primary_cpu"] / t["pages"], 4),
                "standby_cpu_ms_per_page": round(1000 * t["standby_cpu"] / t["pages"], 4),
                "client_cpu_ms_per_page": round(1000 * t["client_cpu"] / t["pages"], 4),
                "primary_cpu_s": round(t["primary_cpu"], 2)}
            if "routed_total" in t:  # reads (3 a page) the router sent to the replica
                result[name]["reads_on_replica_fraction"] = round(t["routed_replica"] / t["routed_total"], 3)
        for suffix in ("", "_writes"):
            p, r = result["primary" + suffix], result["replica" + suffix]
            result["ratio_pages_per_s" + suffix] = round(r["pages_per_s"] / p["pages_per_s"], 3)
            result["primary_cpu_saved" + suffix] = round(
                1 - r["primary_cpu_ms_per_page"] / p["primary_cpu_ms_per_page"], 3)
        return result
    finally:
        for store in stores:
            await store.close()
        if standby is not None:
            standby.stop()
        primary.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="2 s phases and a smaller room")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    seconds, messages = (2.0, 5000) if args.quick else (8.0, 20000)
    result = asyncio.run(run(seconds, args.concurrency, messages))
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
