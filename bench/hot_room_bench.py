"""Hot room benchmark: one `veza chat` worker delivering a live-event room, with and without batched delivery.

    .venv/bin/python bench/hot_room_bench.py            # ~3 minutes: 5,000 sockets, 100 msg/s; progress on stderr
    .venv/bin/python bench/hot_room_bench.py --quick    # ~40 s: 1,000 sockets, 50 msg/s, one round

Starts PostgreSQL, NATS and Redis locally (veza_local.services) and one dedicated `veza chat` worker for one room,
then runs two phases against that same worker (on the workers' event loop: uvloop, or the standard one with
`VEZA_EVENT_LOOP=asyncio`), each with fresh sockets in the room (5,000; 1,000 with --quick), of
which a few are senders (messages round-robin over them, at 100 msg/s: 500,000 deliveries/s offered):

* `per_message` (the baseline): the sockets connect as clients always have, without `?batch=1`: one `event` frame
  per event, as the worker has always delivered them;
* `batched`: the same number of sockets connect with `?batch=1` (docs/chat-protocol.md, "Batched delivery"): the
  worker coalesces the events of a short window into `events` frames, one write per socket.

The phases alternate (`--rounds`, default 3: per_message, batched, batched, per_message, per_message, batched), so
warming up and the machine's drift favour neither; the ratio is from the sums over the rounds. A last phase,
`messages_only`, sends the same messages to a handful of sockets: its worker CPU per message is what a message
costs besides its deliveries (group commit, ack, rate limit, JetStream publish, the recent-events cache), the same
in both phases; `ratio_per_worker_cpu_delivery_only` is the ratio once that is taken out of both. Then
`messages_only_4x`, the same at four times the rate: a message's cost there against the first tells how much of it is
the worker waking up from idle between messages (bench/wake_bench.py measures that alone). On a busy machine
the per-message loop falls behind and puts more events into each write by itself (`events_per_write`), at the
price of its latency: compare ratios of runs whose phases kept up.

Figures per phase: `deliveries` (events received by the sockets, counted in the bytes they read: a batch of k
events counts k), the worker's CPU seconds over the window (send start until every socket has everything, or 15 s
after the last send; `worker_user_system_s` splits it: a socket write is mostly the kernel's),
`deliveries_per_worker_cpu_s`, `events_per_write` (events per write to every socket: the per-message delivery
loop already puts the events that queued during its previous pass into one write), send -> deliver latency at the
probe sockets (the send time rides in the message text; p50/p99/max), the load generator's and the backing
services' CPU.
`ratio_per_worker_cpu` = batched deliveries per worker CPU second / per_message's. Correctness: every probe socket
records the seq of every event it gets; it must hold exactly the seqs the senders' acks returned in the phase, once
each, in ascending order (`probes_ok`); every other socket must count every event (`all_delivered`); every
probe's welcome must grant batches exactly in the batched phase (`batch_as_asked`). `gc_full_collections` and
`gc_full_pause_s`: the worker's full garbage collections in the window (each stops its loop: ~0.4 s with 5,000
sockets; see veza_core.heap) and their pauses in all.

The load generator is chat_bench's raw asyncio client; only the probes and senders parse frames, the other sockets
count event objects in the bytes they read (`{"type":"event","seq"` begins each, in `event` frames and inside
`events` frames alike), so it costs less per delivery than the worker. This machine is shared and noisy: ratios
hold, absolute times drift; `loadavg_at_start`/`_at_end` and each phase's `loadavg` tell. The last stdout line is
one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from chat_bench import (
    BACKING,
    Servers,
    Stats,
    WsClient,
    cpu_seconds,
    family_cpu,
    metric_samples,
    pct,
    sample_total,
    say,
    scrape,
    start_veza,
    worker_env,
    ws_connect,
)
from loadgen import user_system
from veza_chat.room import BATCH_GROUP
from veza_core.eventloop import event_loop_kind
from veza_local.services import NatsService, PostgresService, RedisService

WORKLOADS = Path(__file__).resolve().parents[1] / "workloads"
ROOM = "live"
SPEC = {"limits": {"messagesPerMinute": 1e9, "maxMembers": 100000}}  # limits are not what is measured
EVENT_MARK = b'{"type":"event","seq"'  # begins every event object, alone or inside an `events` frame
PING = b"\x89\x00"  # the worker's heartbeat ping (empty payload)
PONG = bytes([0x8A, 0x80]) + b"\0\0\0\0"


class HotClient(WsClient):
    """chat_bench's client with three roles: a counter (counts event objects in the raw bytes, parses nothing),
    a probe (records every event's seq and latency) or a sender (records the seq of every ack)."""

    def __init__(self, stats: Stats, *, probe: bool = False, sender: bool = False) -> None:
        super().__init__(stats, probe=probe, sender=sender)
        self.seqs: list[int] = []
        self.acked: dict[str, int] = {}
        self.tail = b""
        self.batch_granted: bool | None = None  # what the welcome said (probes and senders)

    def data_received(self, data: bytes) -> None:
        if not self.open or self.probe or self.sender:
            super().data_received(data)
            return
        # Counter: the marks in these bytes, plus one split across the previous read and this one.
        window = self.tail + data
        if self.stats.counting:
            self.stats.events += window.count(EVENT_MARK)
        if PING in window and self.transport is not None:
            self.transport.write(PONG)  # a false match only sends an unsolicited pong, which RFC 6455 allows
        self.tail = data[-(len(EVENT_MARK) - 1):]

    def on_text(self, buf: bytearray, start: int, end: int) -> None:
        stats = self.stats
        if buf.startswith(b'{"type":"event', start):  # `event` or `events`
            frame = json.loads(bytes(buf[start:end]))
            events = frame["events"] if frame["type"] == "events" else [frame]
            now = time.time()
            for event in events:
                if stats.counting:
                    stats.events += 1
                if self.probe and stats.counting:
                    self.seqs.append(event["seq"])
                    stats.latencies.append(now - float(event["text"].split("|", 1)[0]))
        elif buf.startswith(b'{"type":"welcome"', start):
            self.batch_granted = "batch" in json.loads(bytes(buf[start:end]))
        elif self.sender and buf.startswith(b'{"type":"ack"', start):
            ack = json.loads(bytes(buf[start:end]))
            sent = stats.sent_at.pop(ack["cid"], None)
            stats.acks += 1
            self.acked[ack["cid"]] = ack["seq"]
            if sent is not None and stats.counting:
                stats.ack_latencies.append(time.time() - sent)


async def full_collections(worker: Servers) -> tuple[float, float]:
    """(count, seconds) of the worker's full garbage collections so far (`veza_gc_pause_seconds`, generation 2)."""
    samples = await metric_samples(worker)
    return (sample_total(samples, "veza_gc_pause_seconds_count", generation="2"),
            sample_total(samples, "veza_gc_pause_seconds_sum", generation="2"))


async def connect(port: int, path: str, token: str, stats: Stats, **kind: bool) -> HotClient:
    client = await ws_connect(port, path, token, stats, client=HotClient, timeout=60, **kind)
    assert isinstance(client, HotClient)
    return client


async def phase(worker: Servers, label: str, batched: bool, tokens: list[str], args: argparse.Namespace,
                sockets_n: int | None = None) -> dict[str, Any]:
    stats = Stats()
    path = f"/chat/{ROOM}/ws" + ("?batch=1" if batched else "")
    n, senders_n, probes_n = sockets_n or args.sockets, args.senders, args.probes
    probes_n = min(probes_n, n - senders_n)
    gate = asyncio.Semaphore(100)
    clients: list[HotClient | None] = [None] * n

    async def one(i: int) -> None:
        async with gate:
            clients[i] = await connect(worker.ports[0], path, tokens[i], stats, sender=i < senders_n,
                                       probe=senders_n <= i < senders_n + probes_n)

    t = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    sockets = [c for c in clients if c is not None]
    say(f"  {len(sockets)} sockets connected in {time.monotonic() - t:.1f} s")
    senders, probes = sockets[:senders_n], sockets[senders_n:senders_n + probes_n]
    await asyncio.sleep(2.0)
    pid = worker.procs[0].pid
    run = secrets.token_hex(4)
    loadgen0, cpu0, backing0 = time.process_time(), cpu_seconds(pid), family_cpu(BACKING)
    split0 = user_system(pid)
    writes0 = (await scrape(worker, "veza_chat_fanout_seconds"))[1]
    gc0 = await full_collections(worker)
    stats.counting = True
    t0 = time.monotonic()
    total = int(args.rate * args.seconds)
    for i in range(total):
        delay = t0 + i / args.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        cid = f"{run}-{i}"  # cids are per user: a fresh one per phase
        stats.sent_at[cid] = time.time()
        senders[i % len(senders)].send(json.dumps({"type": "send", "cid": cid,
                                                   "text": f"{time.time()!r}|m{i}"}).encode())
    expected = total * len(sockets)
    deadline = time.monotonic() + 15
    while (stats.events < expected or stats.acks < total) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    elapsed = time.monotonic() - t0
    cpu, backing = cpu_seconds(pid) - cpu0, family_cpu(BACKING) - backing0
    split = [round(b - a, 2) for a, b in zip(split0, user_system(pid), strict=True)]
    # One fan-out observation per write to a set of sockets: a pass of the per-message loop over all of them, a
    # batched turn of one group (the room's batching sockets are written in groups of BATCH_GROUP, in turn).
    writes = ((await scrape(worker, "veza_chat_fanout_seconds"))[1] - writes0) / (
        math.ceil(len(sockets) / BATCH_GROUP) if batched else 1)
    gc_count, gc_seconds = (b - a for a, b in zip(gc0, await full_collections(worker), strict=True))
    loadgen = time.process_time() - loadgen0
    stats.counting = False
    for c in sockets:
        if c.transport is not None:
            c.transport.close()
    acked = sorted(seq for s in senders for seq in s.acked.values())
    bad = [f"probe {k}: {len(p.seqs)} seqs of {len(acked)}, first {p.seqs[:3]}"
           for k, p in enumerate(probes) if p.seqs != acked]
    await asyncio.sleep(3.0)  # the closes settle before the next phase
    return {
        "phase": label, "batched": batched, "sockets": len(sockets), "messages": total, "acks": len(acked),
        "offered_msgs_per_s": args.rate, "deliveries": stats.events, "deliveries_expected": expected,
        "deliveries_per_s": round(stats.events / elapsed), "window_s": round(elapsed, 2),
        # Writes to every socket (per-message: passes of the delivery loop; batched: turns of every group): the
        # events one such write carries, on average.
        "writes_to_every_socket": int(writes), "events_per_write": round(total / writes, 1) if writes else None,
        "worker_cpu_s": round(cpu, 2), "worker_user_system_s": split, "worker_cpu_pct": round(cpu / elapsed * 100, 1),
        "deliveries_per_worker_cpu_s": round(stats.events / cpu) if cpu else None,
        "send_to_deliver_ms": {"p50": pct(stats.latencies, 0.5), "p99": pct(stats.latencies, 0.99),
                               "max": pct(stats.latencies, 1.0)},
        "ack_ms": {"p50": pct(stats.ack_latencies, 0.5), "p99": pct(stats.ack_latencies, 0.99)},
        "loadgen_cpu_s": round(loadgen, 2), "backing_cpu_s": round(backing, 2),
        # Full garbage collections in the window and how long they stopped the worker, in all (veza_core.heap).
        "gc_full_collections": int(gc_count), "gc_full_pause_s": round(gc_seconds, 3),
        "probes": len(probes), "probes_ok": not bad and len(acked) == total, "probe_failures": bad[:3],
        # Every probe's and sender's welcome granted batches exactly when they asked for them.
        "batch_as_asked": all(c.batch_granted is batched for c in [*senders, *probes]),
        "all_delivered": stats.events == expected,
        "loadavg": round(os.getloadavg()[0], 2),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    results: dict[str, Any] = {"bench": "hot_room", "cpus": os.cpu_count(), "quick": args.quick,
                               "event_loop": event_loop_kind(),
                               "sockets": args.sockets, "offered_msgs_per_s": args.rate,
                               "offered_deliveries_per_s": round(args.sockets * args.rate),
                               "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
    work = Path(tempfile.mkdtemp(prefix="hot-room-bench-"))
    say(f"services in {work}")
    pg, nats, redis = PostgresService(work), NatsService(work), RedisService(work)
    phases: list[dict[str, Any]] = []
    try:
        for svc in (pg, nats, redis):
            svc.start()
            assert svc.process is not None
            BACKING.append(svc.process.pid)
        issuer, env = worker_env(work, pg, nats, redis)
        env["VEZA_RESOURCE_SPEC"] = json.dumps(SPEC)
        # The worker runs this checkout's code, whatever the environment's editable install points to.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(WORKLOADS), os.environ.get("PYTHONPATH")]))
        tokens = [issuer.issue(f"u{i}", audience="veza-chat", ttl=3600, name=f"user {i}")
                  for i in range(args.sockets)]
        worker = await start_veza(env, ROOM, n=1, log_dir=work)
        try:
            order = [("per_message", False), ("batched", True)]
            plan = [step for r in range(args.rounds) for step in (order if r % 2 == 0 else order[::-1])]
            for label, batched in plan:
                say(f"[{label}] {args.sockets} sockets{' with ?batch=1' if batched else ''}, "
                    f"{args.rate:g} msg/s over {args.senders} senders for {args.seconds:g} s")
                phases.append(await phase(worker, label, batched, tokens, args))
                say(f"  {phases[-1]}")
            # The same messages to a handful of sockets: what a message costs the worker besides its deliveries.
            # At four times the rate the worker's loop idles a quarter as long between messages: on a host where
            # waking from idle is dear (bench/wake_bench.py), a message costs less there.
            small = args.senders + 4
            for label, rate in (("messages_only", args.rate), ("messages_only_4x", 4 * args.rate)):
                say(f"[{label}] {small} sockets, {rate:g} msg/s for {args.seconds:g} s")
                paced = argparse.Namespace(**{**vars(args), "rate": rate})
                phases.append(await phase(worker, label, False, tokens, paced, sockets_n=small))
                say(f"  {phases[-1]}")
        finally:
            worker.stop()
    finally:
        for svc in (redis, nats, pg):
            svc.stop()
        shutil.rmtree(work, ignore_errors=True)
    results["phases"] = phases
    results["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]

    def per_cpu(label: str) -> float | None:
        cpu = sum(p["worker_cpu_s"] for p in phases if p["phase"] == label)
        return sum(p["deliveries"] for p in phases if p["phase"] == label) / cpu if cpu else None

    base, batched = per_cpu("per_message"), per_cpu("batched")

    def own_cost(label: str) -> float:
        """Worker CPU seconds per message in a phase of a handful of sockets."""
        only = next(p for p in phases if p["phase"] == label)
        return only["worker_cpu_s"] / only["messages"]

    per_message_cpu = own_cost("messages_only")

    def per_delivery_cpu(label: str) -> float | None:
        """Deliveries per worker CPU second once the messages' own cost (the messages_only phase's) is taken out."""
        mine = [p for p in phases if p["phase"] == label]
        cpu = sum(p["worker_cpu_s"] - per_message_cpu * p["messages"] for p in mine)
        return sum(p["deliveries"] for p in mine) / cpu if cpu > 0 else None

    base_d, batched_d = per_delivery_cpu("per_message"), per_delivery_cpu("batched")
    results["summary"] = {
        "deliveries_per_worker_cpu_s": {"per_message": round(base) if base else None,
                                        "batched": round(batched) if batched else None},
        "ratio_per_worker_cpu": round(batched / base, 2) if base and batched else None,
        # What a message costs the worker besides delivering it (group commit, ack, rate limit, JetStream publish,
        # recent-events cache), and the ratio of the delivery work alone once that is taken out of both phases.
        "worker_cpu_ms_per_message_besides_delivery": round(per_message_cpu * 1000, 2),
        "worker_cpu_ms_per_message_besides_delivery_at_4x_rate": round(own_cost("messages_only_4x") * 1000, 2),
        "ratio_per_worker_cpu_delivery_only": round(batched_d / base_d, 2) if base_d and batched_d else None,
        "events_per_write": {label: [p["events_per_write"] for p in phases if p["phase"] == label]
                             for label in ("per_message", "batched")},
        "ratio_by_round": [round(b["deliveries_per_worker_cpu_s"] / a["deliveries_per_worker_cpu_s"], 2)
                           for a, b in zip([p for p in phases if p["phase"] == "per_message"],
                                           [p for p in phases if p["phase"] == "batched"], strict=False)
                           if a["deliveries_per_worker_cpu_s"] and b["deliveries_per_worker_cpu_s"]],
        "p99_ms": {label: max((p["send_to_deliver_ms"]["p99"] or 0) for p in phases if p["phase"] == label)
                   for label in ("per_message", "batched")},
        "correct": all(p["probes_ok"] and p["all_delivered"] and p["batch_as_asked"] for p in phases),
        "loadavg_by_phase": [p["loadavg"] for p in phases],
        "gc_full_collections_in_windows": sum(p["gc_full_collections"] for p in phases),
        "targets": {"ratio_per_worker_cpu": ">= 3", "p99_ms_batched": "<= 250", "correct": True},
    }
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 sockets, 50 msg/s, 5 s windows, one round")
    parser.add_argument("--sockets", type=int, help="sockets in the room (default 5000; 1000 with --quick)")
    parser.add_argument("--rate", type=float, help="messages per second (default 100; 50 with --quick)")
    parser.add_argument("--seconds", type=float, help="sending window per phase (default 10; 5 with --quick)")
    parser.add_argument("--rounds", type=int, help="rounds of both phases (default 3; 1 with --quick)")
    parser.add_argument("--senders", type=int, default=4, help="sockets that send (among --sockets)")
    parser.add_argument("--probes", type=int, default=50, help="sockets that check every seq (among --sockets)")
    ns = parser.parse_args()
    ns.sockets = ns.sockets or (1000 if ns.quick else 5000)
    ns.rate = ns.rate or (50.0 if ns.quick else 100.0)
    ns.seconds = ns.seconds or (5.0 if ns.quick else 10.0)
    ns.rounds = ns.rounds or (1 if ns.quick else 3)
    out = asyncio.run(main(ns))
    print(json.dumps(out, separators=(",", ":")))
