"""Connect storms: listeners rushing one stream worker, and a chat worker restarted under 10,000 sockets.

    .venv/bin/python bench/storm_bench.py                 # both parts, ~3 minutes; progress on stderr
    .venv/bin/python bench/storm_bench.py --only stream   # or --only chat
    .venv/bin/python bench/storm_bench.py --quick         # smaller, for a smoke run

1. Stream listener connects per second. One `veza stream` process (a playlist channel, one 128 kbps MP3 rendition)
   and icecast2 (fed by ffmpeg, as bench/stream_bench.py runs it) are pinned to the same core, one after the other;
   load generator processes pinned to the other cores open `--listeners` listeners at an offered `--offered-rate`
   per second (open loop: a new connection is started on schedule whether or not the earlier ones are through, as
   a real rush of listeners does). A connect is done when the response headers and the first audio bytes arrived;
   a listener then stays connected (its socket unread) until the storm is over. Figures: connects per second (done
   listeners over the time from the first connection attempt to the last done one), connect → first audio p50/p99,
   failed connects, server and load generator CPU. Icecast is at its best here: its listen backlog is compiled in
   (5, no setting changes it) and its accept thread hands each client to its worker with no per-connect work
   to tune; the same burst (32 kB) as the worker's, so both answer with audio at once. SYNs a full backlog
   drops are sent again by the client's kernel after 1 s, then 3 s, 7 s: what a full backlog costs shows as the
   p99 and the rate.
2. Chat reconnect storm. PostgreSQL, NATS and Redis run locally (veza_local.services) under two `veza chat`
   workers serving one room; `--sockets` clients (10,000) in two load generator processes, half on each worker,
   each its own user and token, while one sender on the surviving worker sends `--rate` messages per second. Then
   one worker is restarted (`--signal term`: SIGTERM, the worker closes its sockets with 1012 after acking the
   sends in flight, and a fresh process starts on the same port at once; `--signal kill`: SIGKILL, the sockets
   reset). Every client whose socket closed reconnects as a client of the protocol does (docs/chat-protocol.md,
   "Sequence numbers and guarantees"): to the same address, with `?after=<last seq it holds>`, after a random
   0-`--jitter` s; a refused connection (the fresh process not listening yet) is retried after 0.1 s doubling up to
   1 s, each wait drawn in its upper half. Figures: seconds from the signal until every client got its `resumed`
   marker (`all_resumed_s`), the fresh process's start (port accepting) and the time from there
   (`resumed_after_listening_s`); that every client holds every seq exactly once, in order (`seq_errors`: gaps or
   duplicates at any client, and every client's last seq equal to the room's last acked seq); the largest gap
   between deliveries at the surviving worker's clients and send → deliver p99 at 200 probe sockets of theirs,
   during the storm against the same window before it (`survivors`), and the surviving worker's own part of it:
   `worker_fanout_p99_ms_at_most` and `worker_fanout_max_ms_at_most` (the buckets of its `veza_chat_fanout_seconds`
   histogram, commit -> written to every socket, that hold 99 % and all of the storm's writes to a set of its
   sockets: each write is observed once, for the oldest message it carries, so every message of those writes went
   out within that bound) and its CPU seconds over the storm (`worker_cpu_s_during`); the clients' figures add the
   load generators' own delays, busy with the storm too. Baseline in the same run: the same sockets on two bare
   aiohttp WebSocket servers (bench/chat_bench.py's: no auth, no storage, no resume), one restarted the same way, the
   clients reconnecting the same way: `ratio_all_resumed` and `ratio_after_listening` are veza's times over the bare
   server's. The bare server is at its best as a baseline: it does nothing but the
   WebSocket handshake (no token, no room, no replay), on the workers' event loop and with their listen backlog
   (4096, `VEZA_CHAT_LISTEN_BACKLOG`; aiohttp's default of 128 drops most SYNs of the storm, and their clients'
   kernels send them again 1, 3, 7, 15 and 31 s later: with it, the workers' storm took 5-31 s on one machine in one
   hour).
The last stdout line is one JSON object; `loadavg` beside each part tells what else the machine was doing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "workloads"), str(ROOT), str(ROOT / "bench")]

import loadgen  # noqa: E402
from loadgen import raise_fd_limit  # noqa: E402


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1)


def proc_cpu(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


class Generators(loadgen.Generators):
    """This script's own load generators (a hidden flag each), on `cpus`."""

    def __init__(self, argv: list[list[str]], cpus: set[int] | None = None) -> None:
        super().__init__([[sys.executable, __file__, *a] for a in argv], cpus)

    async def ask_async(self, *commands: str) -> list[dict[str, Any]]:
        return await asyncio.get_running_loop().run_in_executor(None, lambda: self.ask(*commands))

    def cpu(self) -> float:
        return sum(proc_cpu(p.pid) for p in self.procs)



# -- 1. stream listener connects ----------------------------------------------------------------------------------

async def listener_generator(host: str, port: int, path: str) -> None:
    """A load generator process: `storm N RATE` opens N listeners at RATE per second (open loop) and reports when
    each got its headers and first audio bytes; `close` drops them all."""
    loop = asyncio.get_running_loop()
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: storm\r\n\r\n".encode()

    class Listener(asyncio.Protocol):
        __slots__ = ("buf", "done", "transport")

        def __init__(self) -> None:
            self.buf = b""
            self.done: asyncio.Future[None] = loop.create_future()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            transport.write(request)  # type: ignore[attr-defined]

        def data_received(self, data: bytes) -> None:
            if self.done.done():
                return
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                if not self.buf.startswith(b"HTTP/1.") or b" 200 " not in self.buf[:16]:
                    self.done.set_exception(ConnectionError(self.buf[:60].decode(errors="replace")))
                elif len(self.buf) > end + 4:  # the first audio bytes (or their chunk header) came
                    self.done.set_result(None)
                    self.transport.pause_reading()  # type: ignore[attr-defined]
                    self.buf = b""

        def connection_lost(self, exc: Exception | None) -> None:
            if not self.done.done():
                self.done.set_exception(ConnectionError("closed before audio"))

    kept: list[asyncio.BaseTransport] = []
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line or line[0] == "quit":
            break
        if line[0] == "close":
            for t in kept:
                t.close()
            kept.clear()
            await asyncio.sleep(0.5)
            print("{}", flush=True)
            continue
        n, rate, start = int(line[1]), float(line[2]), float(line[3])
        times: list[float] = []  # connect to first audio, of each done listener
        ends: list[float] = []
        failed: list[int] = []

        async def one(times: list[float], ends: list[float], failed: list[int]) -> None:
            try:
                t0 = time.time()
                transport, proto = await asyncio.wait_for(loop.create_connection(Listener, host, port), 30)
                kept.append(transport)
                await asyncio.wait_for(proto.done, 30)
                ends.append(time.time())
                times.append(ends[-1] - t0)
            except (OSError, TimeoutError, ConnectionError):
                failed.append(1)

        await asyncio.sleep(max(0.0, start - time.time()))
        first = time.time()
        tasks = []
        for i in range(n):
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.time()))
            tasks.append(asyncio.ensure_future(one(times, ends, failed)))
        await asyncio.gather(*tasks)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        print(json.dumps({"times": times, "failed": len(failed), "first": first, "last": max(ends, default=0.0),
                          "cpu": ru.ru_utime + ru.ru_stime}), flush=True)


def listener_storm(name: str, pid: int, port: int, path: str, args: argparse.Namespace) -> dict[str, Any]:
    """`--listeners` listeners at `--offered-rate` against the server `pid` on `port`, pinned to one core."""
    from stream_bench import renice

    server_cpu = min(os.sched_getaffinity(0))
    others = (os.sched_getaffinity(0) - {server_cpu}) or {server_cpu}
    os.sched_setaffinity(pid, {server_cpu})
    renice(pid, 0)
    k = args.stream_loadgens
    gens = Generators([["--listener-generator", str(port), path] for _ in range(k)], others)
    try:
        time.sleep(0.5)
        load0 = loadavg()
        cpu0, gen0 = proc_cpu(pid), gens.cpu()
        start = time.time() + 0.5
        n = args.listeners
        res = gens.ask(*(f"storm {n // k + (i < n % k)} {args.offered_rate / k} {start + i / args.offered_rate}"
                         for i in range(k)))
        cpu, gen = proc_cpu(pid) - cpu0, gens.cpu() - gen0
        gens.ask(*["close"] * k)
    finally:
        gens.close()
    times = [t for r in res for t in r["times"]]
    first = min(r["first"] for r in res)
    last = max((r["last"] for r in res if r["last"]), default=first)
    failed = sum(r["failed"] for r in res)
    out = {"listeners": n, "done": len(times), "failed": failed, "offered_per_s": args.offered_rate,
           "connects_per_s": round(len(times) / (last - first)) if last > first else None,
           "seconds": round(last - first, 2),
           "connect_to_audio_ms": {"p50": pct(times, 0.5), "p99": pct(times, 0.99), "max": pct(times, 1.0)},
           "over_1s": sum(t > 1.0 for t in times),
           "server_cpu_s": round(cpu, 2), "server_cpu_us_per_connect": round(cpu / max(1, len(times)) * 1e6),
           "loadgen_cpu_s": round(gen, 2), "loadavg": [load0, loadavg()]}
    say(f"  {name}: {out}")
    return out


def stream_part(args: argparse.Namespace) -> dict[str, Any]:
    from stream_bench import encode_mp3, need_tools, running_icecast, running_veza, track_bucket, write_input

    need_tools()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="storm-stream-") as d:
        tmp = Path(d)
        wav, mp3 = tmp / "input.wav", tmp / "input.mp3"
        write_input(wav, 20)
        encode_mp3(wav, mp3)
        s3, s3env = track_bucket(tmp, mp3)
        try:
            s3env.update(args.stream_env)
            with running_veza(tmp, s3env) as (pid, port):
                say(f"[stream] veza stream: {args.listeners} listeners offered at {args.offered_rate:.0f}/s")
                result["veza"] = listener_storm("veza", pid, port, "/stream/bench/mp3", args)
        finally:
            s3.stop()
        n = min(args.listeners, args.icecast_listeners)
        with running_icecast(mp3, args.listeners + 100, loglevel=1) as (pid, port):  # as bench/stream_bench.py runs it
            say(f"[stream] icecast2: {n} listeners offered at {args.offered_rate:.0f}/s (its listen backlog is 5)")
            result["icecast2"] = listener_storm("icecast2", pid, port, "/bench.mp3",
                                                argparse.Namespace(**{**vars(args), "listeners": n}))
    v, i = result["veza"]["connects_per_s"], result["icecast2"]["connects_per_s"]
    result["ratio_connects_per_s_vs_icecast"] = round(v / i, 2) if v and i else None
    return result


# -- 2. chat reconnect storm --------------------------------------------------------------------------------------

SEQ = b'"seq":'


async def chat_generator(ports: list[int], room: str, tokens_file: str, first: int, count: int, jitter: float,
                         probes: int, bare: bool) -> None:
    """A load generator process: `count` WebSocket clients (tokens `first`.. of the file), client i on
    `ports[i % len(ports)]`, each reconnecting with `?after=` when its socket closes. Commands: `connect`,
    `mark` (start a measuring window), `report`, `quit`."""
    from chat_bench import FrameReader, upgrade_request

    loop = asyncio.get_running_loop()
    tokens = Path(tokens_file).read_text().split()[first:first + count] if not bare else [""] * count
    clock = time.time

    class Client(FrameReader):
        def __init__(self, index: int, port: int, token: str) -> None:
            self.index, self.port, self.token = index, port, token
            self.probe = index < probes
            self.buf = bytearray()
            self.open = False
            self.transport: asyncio.Transport | None = None
            self.ready: asyncio.Future[None] | None = None
            self.last_seq = -1  # unknown until the welcome
            self.errors = 0
            self.closed_at = 0.0
            self.resumed_at = 0.0
            self.reconnects = 0
            self.attempts = 0
            self.last_at = 0.0
            self.max_gap = 0.0
            self.latencies: list[float] = []

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]
            after = f"?after={self.last_seq}" if self.last_seq >= 0 else ""
            transport.write(upgrade_request(self.port, f"/chat/{room}/ws{after}", self.token or None))  # type: ignore[attr-defined]

        def connection_lost(self, exc: Exception | None) -> None:
            was_open, self.open, self.transport = self.open, False, None
            self.buf.clear()
            if self.ready is not None and not self.ready.done():
                self.ready.set_exception(ConnectionError("closed during the handshake"))
            elif was_open and state["storm"]:
                self.closed_at = clock()
                loop.call_later(random.uniform(0, jitter), lambda: asyncio.ensure_future(self.reconnect()))

        async def connect(self) -> None:
            self.ready = loop.create_future()
            self.attempts += 1
            await loop.create_connection(lambda: self, "127.0.0.1", self.port)
            await asyncio.wait_for(self.ready, 30)

        async def reconnect(self) -> None:
            self.reconnects += 1
            wait = 0.1
            while True:
                try:
                    await self.connect()
                    if bare:
                        self.resumed_at = clock()
                    return
                except (OSError, ConnectionError, TimeoutError):
                    if self.transport is not None:
                        self.transport.close()
                    await asyncio.sleep(random.uniform(wait / 2, wait))
                    wait = min(1.0, wait * 2)

        def on_text(self, buf: bytearray, start: int, end: int) -> None:
            if buf.startswith(b'{"type":"event"', start):
                if bare:
                    seq = 0
                else:
                    at = buf.find(SEQ, start, end) + len(SEQ)
                    stop = at
                    while 48 <= buf[stop] <= 57:
                        stop += 1
                    seq = int(buf[at:stop])
                    if self.last_seq >= 0 and seq != self.last_seq + 1:
                        self.errors += 1
                    self.last_seq = seq
                now = clock()
                if state["marked"]:
                    if self.last_at:
                        self.max_gap = max(self.max_gap, now - self.last_at)
                    if self.probe:
                        text = json.loads(bytes(buf[start:end]))["text"]
                        self.latencies.append(now - float(text.split("|", 1)[0]))
                self.last_at = now
            elif buf.startswith(b'{"type":"welcome"', start):
                if self.last_seq < 0:
                    self.last_seq = json.loads(bytes(buf[start:end]))["last_seq"]
            elif buf.startswith(b'{"type":"resumed"', start):
                self.resumed_at = clock()

    async def first_connect(c: Client, gate: asyncio.Semaphore) -> str | None:
        async with gate:
            try:
                await c.connect()
            except (OSError, ConnectionError, TimeoutError) as exc:
                return repr(exc)
        return None

    state = {"storm": False, "marked": False}
    clients = [Client(first + i, ports[(first + i) % len(ports)], tokens[i]) for i in range(count)]
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line or line[0] == "quit":
            break
        out: dict[str, Any] = {}
        if line[0] == "connect":
            t0 = time.monotonic()
            gate = asyncio.Semaphore(64)
            errors = await asyncio.gather(*(first_connect(c, gate) for c in clients))
            state["storm"] = True
            failed = [e for e in errors if e]
            if failed:
                print(f"{len(failed)} connects failed, e.g. {failed[0]}", file=sys.stderr, flush=True)
            out = {"connected": sum(c.open for c in clients), "failed": len(failed), "seconds": time.monotonic() - t0}
        elif line[0] == "mark":
            state["marked"] = True
            for c in clients:
                c.max_gap, c.latencies = 0.0, []
        elif line[0] == "report":
            # on `port`: the survivors' figures since the mark; the restarted ones' reconnects
            port = int(line[1])
            survivors = [c for c in clients if c.port == port]
            moved = [c for c in clients if c.reconnects]
            out = {"open": sum(c.open for c in clients), "reconnected": len(moved),
                   "resumed": sum(c.resumed_at >= c.closed_at > 0 for c in moved),
                   "last_resumed": max((c.resumed_at for c in moved), default=0.0),
                   "first_closed": min((c.closed_at for c in moved), default=0.0),
                   "last_closed": max((c.closed_at for c in moved), default=0.0),
                   "attempts": sum(c.attempts for c in moved),
                   "seq_errors": sum(c.errors for c in clients),
                   "last_seqs": [min((c.last_seq for c in clients), default=-1),
                                 max((c.last_seq for c in clients), default=-1)],
                   "survivor_max_gap": max((c.max_gap for c in survivors), default=0.0),
                   "survivor_latencies": [x for c in survivors for x in c.latencies],
                   "cpu": sum(resource.getrusage(resource.RUSAGE_SELF)[:2])}
            for c in clients:
                c.max_gap, c.latencies = 0.0, []
        print(json.dumps(out), flush=True)
    state["storm"] = False  # closing now is no cue to reconnect
    for c in clients:
        if c.transport is not None:
            c.transport.close()


class Sender:
    """Messages at a steady rate on one socket of the surviving worker, each text starting with its send time."""

    def __init__(self, port: int, room: str, token: str | None) -> None:
        self.port, self.room, self.token = port, room, token
        self.sent = 0
        self.task: asyncio.Task[None] | None = None
        self.client: Any = None

    async def start(self, rate: float) -> None:
        from chat_bench import Stats, ws_connect

        self.stats = Stats()
        self.client = await ws_connect(self.port, f"/chat/{self.room}/ws", self.token, self.stats, sender=True)
        self.task = asyncio.create_task(self.run(rate))

    async def run(self, rate: float) -> None:
        t0 = time.monotonic()
        while True:
            await asyncio.sleep(max(0.0, t0 + self.sent / rate - time.monotonic()))
            self.client.send(json.dumps({"type": "send", "cid": f"s{self.sent}",
                                         "text": f"{time.time()!r}|storm"}).encode())
            self.sent += 1

    async def stop(self) -> int:
        """Stop sending; the number of acks once every send was answered (or 10 s passed)."""
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        deadline = time.monotonic() + 10
        while self.stats.acks < self.sent and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.client.transport is not None:
            self.client.transport.close()
        return int(self.stats.acks)


def listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on `port` (IPv4 loopback or any address)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
            found.add(fields[9])
    return found


async def process_listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 60) -> float:
    """Wall time at which the process `proc` (not the one it replaces) listens on `port`, polled every 10 ms."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        inodes = listening_inodes(port)
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{proc.pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        return time.time()
        await asyncio.sleep(0.01)
    raise RuntimeError(f"the fresh process did not listen on {port}")


async def survivor_side(port: int) -> tuple[dict[str, float], float]:
    """The surviving worker's `veza_chat_fanout_seconds` buckets ({le: count}) and CPU seconds so far."""
    from chat_bench import Servers, metric_samples, sample_total

    samples = await metric_samples(Servers([], [port]))
    buckets = {s.labels["le"]: s.value for s in samples if s.name == "veza_chat_fanout_seconds_bucket"}
    return buckets, sample_total(samples, "process_cpu_seconds_total")


def bucket_bound_ms(buckets: dict[str, float], share: float) -> int | None:
    """The smallest bucket bound (ms) of a cumulative histogram's `buckets` ({le: count}) holding `share` of its
    observations; None without observations or when only +Inf holds them."""
    total = buckets.get("+Inf", 0.0)
    le = next((b for b in sorted(buckets, key=float) if buckets[b] >= share * total), None) if total else None
    return None if le is None or le == "+Inf" else round(float(le) * 1000)


async def one_storm(kind: str, args: argparse.Namespace, start_one: Any, ports: list[int], procs: list[Any],
                    room: str, tokens_file: Path, sender_token: str | None) -> dict[str, Any]:
    """Connect every client, send, restart the worker on ports[0], wait for every client to be back, check."""
    bare = kind == "bare"
    k = 2
    n = args.sockets
    gens = Generators([["--chat-generator", ",".join(map(str, ports)), room, str(tokens_file), str(i * (n // k)),
                        str(n // k if i < k - 1 else n - i * (n // k)), str(args.jitter),
                        str(args.probes // k), "1" if bare else "0"] for i in range(k)])
    sender = Sender(ports[1], room, sender_token)
    restarted = None
    try:
        t0 = time.monotonic()
        res = await gens.ask_async(*["connect"] * k)
        connected = sum(r["connected"] for r in res)
        say(f"  {kind}: {connected} of {n} sockets connected in {time.monotonic() - t0:.1f} s")
        await sender.start(args.rate)
        await asyncio.sleep(2)
        await gens.ask_async(*["mark"] * k)
        await asyncio.sleep(args.window)  # the window before the storm
        before = await gens.ask_async(*[f"report {ports[1]}"] * k)
        await gens.ask_async(*["mark"] * k)
        load0 = loadavg()
        survivor0 = None if bare else await survivor_side(ports[1])
        victim = procs[0]
        signalled = time.time()
        victim.send_signal(signal.SIGTERM if args.signal == "term" else signal.SIGKILL)
        restarted = start_one(ports[0])
        try:
            listening = await process_listening(restarted, ports[0])
        except RuntimeError:  # it lost the race for the port to the old process: again once that one is gone
            await asyncio.get_running_loop().run_in_executor(None, victim.wait)
            restarted = start_one(ports[0])
            listening = await process_listening(restarted, ports[0])
        say(f"  {kind}: signalled; the fresh process listens after {listening - signalled:.2f} s")
        deadline = time.monotonic() + args.storm_timeout
        gaps: list[float] = []  # the survivors' largest gap between deliveries in each look
        lat_during: list[float] = []
        while True:
            await asyncio.sleep(0.5)
            during = await gens.ask_async(*[f"report {ports[1]}"] * k)  # (each report starts a new window)
            gaps.append(max(r["survivor_max_gap"] for r in during))
            lat_during.extend(x for r in during for x in r["survivor_latencies"])
            moved, resumed = sum(r["reconnected"] for r in during), sum(r["resumed"] for r in during)
            if (moved >= connected // 2 and resumed >= moved) or time.monotonic() > deadline:
                break
            say(f"  {kind}: {resumed} of {moved} resumed")
        load1 = loadavg()
        survivor1 = None if bare else await survivor_side(ports[1])
        acked = await sender.stop()
        await asyncio.sleep(2)  # the last events delivered
        final = await gens.ask_async(*[f"report {ports[1]}"] * k)
        generator_cpu = sum(r["cpu"] for r in final)
    finally:
        gens.close()
        procs[0] = restarted if restarted is not None else procs[0]
    last_resumed = max(r["last_resumed"] for r in during)
    last_closed = max(r["last_closed"] for r in during)
    first_closed = min((r["first_closed"] for r in during if r["first_closed"]), default=0.0)
    lat_before = [x for r in before for x in r["survivor_latencies"]]
    out: dict[str, Any] = {
        "sockets": connected, "signal": args.signal, "reconnected": moved, "resumed": resumed,
        "all_resumed_s": round(last_resumed - signalled, 2) if resumed >= moved else None,
        "listening_after_s": round(listening - signalled, 2),
        "resumed_after_listening_s": round(last_resumed - listening, 2) if resumed >= moved else None,
        # from when a reconnect could first succeed (the fresh process listens and the old one let its clients go)
        "storm_s": round(last_resumed - max(listening, first_closed), 2) if resumed >= moved and first_closed
        else None,
        "closes_s": [round(first_closed - signalled, 2), round(last_closed - signalled, 2)] if first_closed else None,
        "connect_attempts": sum(r["attempts"] for r in during),
        "survivors": {"max_gap_ms_before": round(max(r["survivor_max_gap"] for r in before) * 1000),
                      "max_gap_ms_during": round(max(gaps) * 1000),
                      "send_interval_ms": round(1000 / args.rate),
                      "p99_ms_before": pct(lat_before, 0.99), "p99_ms_during": pct(lat_during, 0.99),
                      "p50_ms_during": pct(lat_during, 0.5)},
        "loadgen_cpu_s": round(generator_cpu, 1), "loadavg": [load0, load1]}
    if survivor0 is not None and survivor1 is not None:
        # The surviving worker's own share of the survivors' delay: commit -> written to every socket, from its
        # histogram over the storm (the clients' figures above add the load generators', busy with the storm too).
        buckets = {le: survivor1[0][le] - survivor0[0].get(le, 0.0) for le in survivor1[0]}
        out["survivors"]["worker_fanout_p99_ms_at_most"] = bucket_bound_ms(buckets, 0.99)
        out["survivors"]["worker_fanout_max_ms_at_most"] = bucket_bound_ms(buckets, 1.0)
        out["survivors"]["worker_cpu_s_during"] = round(survivor1[1] - survivor0[1], 2)
    if not bare:
        last = [s for r in final for s in r["last_seqs"]]
        out["acked"] = acked
        out["seq_errors"] = sum(r["seq_errors"] for r in final)
        out["every_client_at_last_seq"] = min(last) == max(last) == acked  # seqs start at 1, one per ack
        out["last_seqs"] = [min(last), max(last)]
    say(f"  {kind}: {out}")
    return out


async def chat_part(args: argparse.Namespace) -> dict[str, Any]:
    from chat_bench import start_bare, start_veza, worker_env
    from veza_local.services import NatsService, PostgresService, RedisService

    work = Path(tempfile.mkdtemp(prefix="storm-chat-"))
    pg, nats, redis = PostgresService(work), NatsService(work), RedisService(work)
    for svc in (pg, nats, redis):
        svc.start()
    result: dict[str, Any] = {}
    try:
        issuer, env = worker_env(work, pg, nats, redis)
        env["VEZA_RESOURCE_SPEC"] = json.dumps({"limits": {"messagesPerMinute": 1e9, "maxMembers": 100000}})
        env["VEZA_SHUTDOWN_GRACE_SECONDS"] = "5"
        t0 = time.monotonic()
        tokens = [issuer.issue(f"u{i}", audience="veza-chat", ttl=7200, name=f"user {i}")
                  for i in range(args.sockets + 1)]
        say(f"[chat] {len(tokens)} tokens issued in {time.monotonic() - t0:.1f} s")
        tokens_file = work / "tokens"
        tokens_file.write_text("\n".join(tokens))

        say(f"[chat] bare aiohttp WebSocket servers: {args.sockets} sockets over two, one restarted")
        bare = await start_bare()

        def start_bare_one(port: int) -> subprocess.Popen[bytes]:
            return subprocess.Popen([sys.executable, str(ROOT / "bench/chat_bench.py"), "--bare-server", str(port)],
                                    stdin=subprocess.DEVNULL)

        try:
            result["bare"] = await one_storm("bare", args, start_bare_one, bare.ports, bare.procs, "bench",
                                             tokens_file, None)
        finally:
            bare.stop()

        room = "storm"
        say(f"[chat] veza chat: {args.sockets} sockets over two workers in one room, {args.rate} msg/s, "
            f"one worker restarted ({args.signal})")
        veza = await start_veza(env, room, log_dir=work)

        def start_veza_one(port: int) -> subprocess.Popen[bytes]:
            log = open(work / f"chat-{room}-restarted.log", "ab")  # noqa: SIM115
            profile = os.environ.get("STORM_PROFILE_DIR")  # cProfile the fresh worker (for development)
            prefix = ["-m", "cProfile", "-o", f"{profile}/restarted.prof"] if profile else []
            proc = subprocess.Popen([sys.executable, *prefix, "-m", "veza_cli.main", "chat"], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log,
                                    env={**os.environ, **env, "PYTHONPATH": os.pathsep.join(
                                        p for p in (os.environ.get("PYTHONPATH"), str(ROOT / "workloads")) if p),
                                         "VEZA_RESOURCE_NAME": room, "VEZA_HTTP_HOST": "127.0.0.1",
                                         "VEZA_HTTP_PORT": str(port)})
            log.close()
            return proc

        try:
            result["veza"] = await one_storm("veza", args, start_veza_one, veza.ports, veza.procs, room,
                                             tokens_file, tokens[-1])
        finally:
            veza.stop()
            if args.keep_logs:
                say(f"  logs in {work}")
    finally:
        for svc in (redis, nats, pg):
            svc.stop()
        if not args.keep_logs:
            shutil.rmtree(work, ignore_errors=True)
    v, b = result["veza"], result["bare"]
    result["ratio_all_resumed"] = (round(v["all_resumed_s"] / b["all_resumed_s"], 2)
                                   if v["all_resumed_s"] and b["all_resumed_s"] else None)
    result["ratio_storm"] = round(v["storm_s"] / b["storm_s"], 2) if v["storm_s"] and b["storm_s"] else None
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="stream,chat", help="parts to run (comma-separated: stream, chat)")
    parser.add_argument("--quick", action="store_true", help="fewer listeners and sockets")
    parser.add_argument("--listeners", type=int, default=8000, help="listeners of the stream worker's storm")
    parser.add_argument("--icecast-listeners", type=int, default=1500, help="listeners of icecast2's storm")
    parser.add_argument("--offered-rate", type=float, default=4000, help="new listeners per second offered")
    parser.add_argument("--stream-loadgens", type=int, default=2, help="listener load generator processes")
    parser.add_argument("--stream-env", action="append", default=[], type=lambda s: tuple(s.split("=", 1)),
                        help="VAR=value for the stream worker (repeatable)")
    parser.add_argument("--sockets", type=int, default=10000, help="chat sockets over the two workers")
    parser.add_argument("--rate", type=float, default=4.0, help="messages per second during the chat storm")
    parser.add_argument("--probes", type=int, default=400, help="probe sockets (latency), half on each worker")
    parser.add_argument("--window", type=float, default=4.0, help="seconds of the window before the storm")
    parser.add_argument("--jitter", type=float, default=0.5, help="most seconds a client waits before reconnecting")
    parser.add_argument("--signal", choices=("term", "kill"), default="term", help="how the worker is stopped")
    parser.add_argument("--storm-timeout", type=float, default=60, help="give up waiting for the resumes after")
    parser.add_argument("--keep-logs", action="store_true", help="keep the chat workers' logs")
    parser.add_argument("--listener-generator", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--chat-generator", nargs=8, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.listener_generator:
        port, path = args.listener_generator
        asyncio.run(listener_generator("127.0.0.1", int(port), path))
        return 0
    if args.chat_generator:
        ports, room, tokens, first, count, jitter, probes, bare = args.chat_generator
        asyncio.run(chat_generator([int(p) for p in ports.split(",")], room, tokens, int(first), int(count),
                                   float(jitter), int(probes), bare == "1"))
        return 0
    if args.quick:
        args.listeners, args.icecast_listeners, args.sockets = 2000, 500, 2000
    raise_fd_limit()
    parts = set(args.only.split(","))
    result: dict[str, Any] = {"bench": "storm", "cpus": os.cpu_count(), "loadavg_at_start": loadavg(),
                              "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}
    if "stream" in parts:
        say("1/2 stream listener connects")
        result["stream"] = stream_part(args)
    if "chat" in parts:
        say("2/2 chat reconnect storm")
        result["chat"] = asyncio.run(chat_part(args))
    result["loadavg_at_end"] = loadavg()
    result["summary"] = {
        "stream_connects_per_s": result.get("stream", {}).get("veza", {}).get("connects_per_s"),
        "icecast2_connects_per_s": result.get("stream", {}).get("icecast2", {}).get("connects_per_s"),
        "chat_all_resumed_s": result.get("chat", {}).get("veza", {}).get("all_resumed_s"),
        "chat_seq_errors": result.get("chat", {}).get("veza", {}).get("seq_errors"),
        "chat_storm_s": result.get("chat", {}).get("veza", {}).get("storm_s"),
        "chat_ratio_storm": result.get("chat", {}).get("ratio_storm"),
        "chat_survivor_max_gap_ms": result.get("chat", {}).get("veza", {}).get("survivors", {}).get(
            "max_gap_ms_during"),
        "targets": {"stream_connects_per_s": ">= 2000", "chat_all_resumed_s": "<= 10", "chat_seq_errors": "0"}}
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
