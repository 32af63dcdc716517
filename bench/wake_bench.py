"""Wake-up benchmark: what one round trip to PostgreSQL, Redis and JetStream costs a client back to back, and the
same round trip when the client has been idle in between, as a chat worker's message is at a live room's pace.

    .venv/bin/python bench/wake_bench.py             # ~2 minutes; progress on stderr
    .venv/bin/python bench/wake_bench.py --rate 50   # the idle pace: round trips per second (default 100)

Starts PostgreSQL, NATS (JetStream) and Redis locally (veza_local.services) and, on the workers' event loop
(uvloop, or the standard one with `VEZA_EVENT_LOOP=asyncio`), one client of each as the workers use them (asyncpg,
redis-py, nats-py). For each, alternating (`--rounds`, default 2 of each):

* `back_to_back` (the baseline): `--calls` round trips one after the other (`SELECT 1`, `PING`, a JetStream publish
  of 100 bytes waiting for its ack);
* `paced`: the same round trips at `--rate` a second, the loop sleeping in between;
* `sleep_only`: the same sleeps without a round trip: what waking up costs by itself.

Figures per client: the client's CPU per round trip (process CPU time: user + system) in each mode, the wall time
of one round trip (p50), and `paced_extra_cpu_us`: paced minus sleep_only, i.e. what the round trip itself cost
after an idle spell; `paced_over_back_to_back` is that over the baseline. What an idle spell costs is the host's
(a virtual CPU that halts when idle starts cold when woken), so its idle driver and halt polling are reported with
the figures (`/sys/devices/system/cpu/cpuidle`, `/sys/module/haltpoll/parameters/guest_halt_poll_ns`). The last
stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import nats
import redis.asyncio as aioredis

from chat_bench import say
from veza_core.eventloop import event_loop_kind, new_event_loop
from veza_local.services import NatsService, PostgresService, RedisService

Call = Callable[[], Awaitable[Any]]


def read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def host() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "loadavg": round(os.getloadavg()[0], 2),
            "cpuidle_driver": read("/sys/devices/system/cpu/cpuidle/current_driver"),
            "guest_halt_poll_ns": read("/sys/module/haltpoll/parameters/guest_halt_poll_ns")}


async def run(call: Call | None, calls: int, rate: float | None) -> tuple[float, list[float]]:
    """(CPU seconds per iteration, wall seconds of each round trip): `calls` iterations, paced at `rate` a second
    (None: back to back); `call` None sleeps only."""
    latencies: list[float] = []
    cpu0, start = time.process_time(), time.perf_counter()
    for i in range(calls):
        if rate is not None:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        if call is not None:
            t = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t)
    return (time.process_time() - cpu0) / calls, latencies


def us(seconds: float) -> float:
    return round(seconds * 1e6, 1)


async def measure(name: str, call: Call, args: argparse.Namespace) -> dict[str, Any]:
    for _ in range(100):  # connections warm, statements prepared
        await call()
    cpu: dict[str, list[float]] = {"back_to_back": [], "paced": [], "sleep_only": []}
    wall: dict[str, list[float]] = {"back_to_back": [], "paced": []}
    for _ in range(args.rounds):
        for mode in ("back_to_back", "paced", "sleep_only"):
            rate = None if mode == "back_to_back" else args.rate
            per_call, latencies = await run(None if mode == "sleep_only" else call, args.calls, rate)
            cpu[mode].append(per_call)
            if mode in wall:
                wall[mode] += latencies
    figures = {f"{mode}_cpu_us": us(statistics.fmean(v)) for mode, v in cpu.items()}
    extra = statistics.fmean(cpu["paced"]) - statistics.fmean(cpu["sleep_only"])
    figures["paced_extra_cpu_us"] = us(extra)
    figures["paced_over_back_to_back"] = round(extra / statistics.fmean(cpu["back_to_back"]), 2)
    for mode, v in wall.items():
        figures[f"{mode}_wall_p50_us"] = us(statistics.median(v))
    say(name, figures)
    return figures


async def main(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="veza-wake-"))
    pg, nt, rd = PostgresService(work), NatsService(work), RedisService(work)
    result: dict[str, Any] = {"event_loop": event_loop_kind(), "rate": args.rate, "calls": args.calls,
                              "rounds": args.rounds, "host_at_start": host()}
    try:
        for service in (pg, nt, rd):
            service.start()
        conn = await asyncpg.connect(pg.url)
        cache = aioredis.from_url(rd.url)
        nc = await nats.connect(nt.url)
        js = nc.jetstream()
        await js.add_stream(name="WAKE", subjects=["wake.>"])
        payload = b"x" * 100
        clients: dict[str, Call] = {"postgresql": lambda: conn.fetchval("SELECT 1"), "redis": cache.ping,
                                    "jetstream": lambda: js.publish("wake.bench", payload)}
        for name, call in clients.items():
            result[name] = await measure(name, call, args)
        await nc.close()
        await cache.aclose()
        await conn.close()
    finally:
        for service in (rd, nt, pg):
            service.stop()
        shutil.rmtree(work, ignore_errors=True)
    result["host_at_end"] = host()
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0, help="paced round trips per second (default 100)")
    parser.add_argument("--calls", type=int, default=1000, help="round trips per mode and round (default 1000)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three modes (default 2)")
    loop = new_event_loop()
    figures = loop.run_until_complete(main(parser.parse_args()))
    loop.close()
    print(json.dumps(figures), file=sys.stdout, flush=True)
