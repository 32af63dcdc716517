"""Chat benchmark: `veza chat` against a bare aiohttp broadcast server under the same client load.

    .venv/bin/python bench/chat_bench.py            # ~3-4 minutes; progress on stderr
    .venv/bin/python bench/chat_bench.py --quick    # smaller, for a smoke run
    .venv/bin/python bench/chat_bench.py --durable-only --durable-runs 3   # durable sends alone, ~2 minutes

Starts PostgreSQL, NATS and Redis locally (veza_local.services), then for 1k and 5k sockets in
one room spread over two server processes: the bare baseline (two aiohttp processes that
broadcast what they receive, no auth, no storage; each message is sent to both; on the workers' event loop,
`VEZA_EVENT_LOOP`, uvloop unless set), then two
`veza chat` workers (auth, group commit to PostgreSQL, fan-out over NATS, Redis rate limits).
Then durable sends in one room (`--durable-runs` rounds): eight sockets over two workers keep `--inflight` (500)
sends in flight together, a new one for every ack; the JSON has acknowledged messages per second, the ack p50/p99
measured at the client, the spread per socket (each socket's acked sends per second, fastest over slowest, and its
own ack p99: a starved sender shows), the events a worker had to read from PostgreSQL because the other's commit
had not reached it over NATS in time (`gap_fills_per_event`), and the check that PostgreSQL holds exactly the acked
seqs, gapless. Each round is
followed by its baseline: the same rows inserted by a plain asyncpg loop with the same batching (the round's mean
group commit per statement), as `ratio_to_plain`. `pg_test_fsync` on the data directory's filesystem is reported
beside them; the local PostgreSQL runs with fsync off unless `--fsync`. Then the cost of tracing: the same durable
sends with tracing off, and exporting to a local Jaeger at 0 %, 1 % and 100 % sampling (two rounds, the second in
reverse order), as ratios to off of the messages acknowledged per second of worker CPU
(`tracing.<ratio>.ratio_to_off`; `--tracing-only` runs just that). The last stdout line is one JSON object.

The load generator is raw asyncio (hand-parsed WebSocket frames, only a few probe sockets decode
JSON) so it costs less per delivery than the servers; its CPU is reported next to theirs.
Deliveries per worker core = deliveries / CPU seconds the server processes used in the window
(`ratio_per_core`); `ratio_per_core_incl_backing` also charges Veza the CPU of PostgreSQL, NATS and
Redis. Latencies depend on what else the machine runs: `loadavg_at_start`/`_at_end` tell.
`cpu_floor_per_message_ms` is the CPU that one message's deliveries cost the servers, the backing services and
the load generator together, divided by the machine's cores: no delivery order makes the last socket of a message
hear it sooner, so a p99 below it needs more cores (or fewer sockets per message), not a faster server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "workloads")]

from loadgen import TICK, cpu_seconds  # noqa: E402
from veza_chat.settings import ChatSettings  # noqa: E402
from veza_core.auth import TokenIssuer  # noqa: E402
from veza_core.eventloop import event_loop_kind, new_event_loop  # noqa: E402
from veza_core.keys import KeySet, generate_signing_key, secret_data  # noqa: E402
from veza_local.controlplane import tools_bin_dir  # noqa: E402
from veza_local.jaeger import JaegerService  # noqa: E402
from veza_local.services import NatsService, PostgresService, RedisService, free_port  # noqa: E402

BACKING: list[int] = []  # pids of PostgreSQL, NATS and Redis


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# -- the bare baseline server ------------------------------------------------------------------

def bare_server(port: int) -> None:
    from aiohttp import WSMsgType, web

    clients: set[web.WebSocketResponse] = set()
    seq = 0

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        nonlocal seq
        ws = web.WebSocketResponse(protocols=("veza.chat.v1",))
        await ws.prepare(request)
        clients.add(ws)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                if frame.get("type") == "send":
                    seq += 1
                    data = json.dumps({"type": "event", "seq": seq, "kind": "message", "id": secrets.token_hex(8),
                                       "author": {"id": "u", "name": "U"}, "ts": int(time.time() * 1000),
                                       "text": frame["text"]}, separators=(",", ":"))
                    for c in list(clients):
                        try:
                            await c.send_str(data)
                        except Exception:  # noqa: S112 - a client went away
                            continue
        finally:
            clients.discard(ws)
        return ws

    app = web.Application()
    app.router.add_get("/chat/{room}/ws", ws_handler)
    async def readyz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    app.router.add_get("/readyz", readyz)
    # On the event loop the workers run on (VEZA_EVENT_LOOP, uvloop unless set): neither side gets a cheaper loop.
    # With the chat worker's listen backlog (VEZA_CHAT_LISTEN_BACKLOG's default): aiohttp's 128 drops the SYNs of a
    # reconnect storm (bench/storm_bench.py), which their clients send again only a second later.
    web.run_app(app, host="127.0.0.1", port=port, print=lambda *_: None, access_log=None, shutdown_timeout=1,
                backlog=ChatSettings.model_fields["chat_listen_backlog"].default, loop=new_event_loop())


# -- a cheap WebSocket client --------------------------------------------------------------------

def client_frame(payload: bytes) -> bytes:
    """A masked text frame (mask key 0: the payload goes as is)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x81, 0x80 | n])
    elif n < 65536:
        head = bytes([0x81, 0xFE]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x81, 0xFF]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


class Stats:
    def __init__(self) -> None:
        self.events = 0
        self.latencies: list[float] = []
        self.ack_latencies: list[float] = []
        self.acks = 0
        self.sent_at: dict[str, float] = {}
        self.counting = False


def upgrade_request(port: int, path: str, token: str | None) -> bytes:
    """The WebSocket handshake a client sends for `path` (the token as a subprotocol, as browsers must)."""
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    protocols = "veza.chat.v1" + (f", bearer.{token}" if token else "")
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: {protocols}\r\n\r\n").encode()


def take_upgrade(buf: bytearray, ready: asyncio.Future[None] | None) -> bool:
    """Consume the server's answer to the handshake from `buf`: True once it said 101 (`ready` done); False while
    it is incomplete, or when it refused (`ready` then holds the error)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return False
    if b" 101 " not in buf[:16]:
        if ready is not None and not ready.done():
            ready.set_exception(ConnectionError(bytes(buf[:200]).decode(errors="replace")))
        return False
    del buf[:end + 4]
    if ready is not None and not ready.done():
        ready.set_result(None)
    return True


def take_frames(buf: bytearray, on_text: Callable[[bytearray, int, int], None],
                transport: asyncio.Transport | None) -> None:
    """Consume every whole server frame in `buf`: text frames to `on_text(buf, start, end)`, pings answered."""
    pos, n = 0, len(buf)
    while n - pos >= 2:
        length = buf[pos + 1] & 0x7F
        head = 2
        if length == 126:
            if n - pos < 4:
                break
            length, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
        elif length == 127:
            if n - pos < 10:
                break
            length, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
        if n - pos < head + length:
            break
        opcode = buf[pos] & 0x0F
        start = pos + head
        if opcode == 1:
            on_text(buf, start, start + length)
        elif opcode == 9 and transport is not None:
            transport.write(bytes([0x8A, 0x80]) + b"\0\0\0\0")
        pos = start + length
    del buf[:pos]


class FrameReader(asyncio.Protocol):
    """The reading side of a raw WebSocket client: the server's upgrade answer (resolving `ready`), then every
    whole frame, text frames to `on_text`."""

    buf: bytearray
    open: bool
    ready: asyncio.Future[None] | None
    transport: asyncio.Transport | None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.open:
            if not take_upgrade(self.buf, self.ready):
                return
            self.open = True
        take_frames(self.buf, self.on_text, self.transport)

    def on_text(self, buf: bytearray, start: int, end: int) -> None:
        raise NotImplementedError


class WsClient(FrameReader):
    def __init__(self, stats: Stats, *, probe: bool = False, sender: bool = False) -> None:
        self.stats = stats
        self.probe = probe
        self.sender = sender
        self.buf = bytearray()
        self.open = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed during the handshake"))
        self.open = False

    def on_text(self, buf: bytearray, start: int, end: int) -> None:
        stats = self.stats
        if buf.startswith(b'{"type":"event"', start):
            if stats.counting:
                stats.events += 1
                if self.probe:
                    text = json.loads(bytes(buf[start:end]))["text"]
                    stats.latencies.append(time.time() - float(text.split("|", 1)[0]))
        elif self.sender and buf.startswith(b'{"type":"ack"', start):
            cid = json.loads(bytes(buf[start:end]))["cid"]
            sent = stats.sent_at.pop(cid, None)
            stats.acks += 1
            if sent is not None and stats.counting:
                stats.ack_latencies.append(time.time() - sent)

    def send(self, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.write(client_frame(payload))


async def ws_connect(port: int, path: str, token: str | None, stats: Stats, *, client: type[WsClient] = WsClient,
                     timeout: float = 30, **kind: bool) -> WsClient:
    """A raw WebSocket handshake to `path`, answered by a `client` protocol (a WsClient or a subclass)."""
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(lambda: client(stats, **kind), "127.0.0.1", port)
    assert proto.transport is not None
    proto.transport.write(upgrade_request(port, path, token))
    await asyncio.wait_for(proto.ready, timeout)
    return proto


# -- processes ---------------------------------------------------------------------------------

def family_cpu(pids: list[int]) -> float:
    """CPU seconds of these processes and their direct children (PostgreSQL's backends)."""
    total = 0.0
    wanted = set(pids)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) in wanted or int(fields[1]) in wanted:
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on {port} exited with {proc.returncode}")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /readyz HTTP/1.0\r\n\r\n")
            line = await reader.readline()
            writer.close()
            if b" 200 " in line:
                return
        except OSError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"server on {port} not ready")


class Servers:
    def __init__(self, procs: list[subprocess.Popen[bytes]], ports: list[int]) -> None:
        self.procs = procs
        self.ports = ports

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def rss(self) -> int:
        return sum(rss_bytes(p.pid) for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


async def start_bare(n: int = 2) -> Servers:
    ports = [free_port() for _ in range(n)]
    procs = [subprocess.Popen([sys.executable, __file__, "--bare-server", str(port)], stdin=subprocess.DEVNULL)
             for port in ports]
    for port, proc in zip(ports, procs, strict=True):
        await wait_ready(port, proc)
    return Servers(procs, ports)


def worker_env(work: Path, pg: PostgresService, nats: NatsService, redis: RedisService
               ) -> tuple[TokenIssuer, dict[str, str]]:
    """A signing key in `work/keys` (what a chat worker verifies tokens with) and its issuer, and the environment
    of a chat worker on these backing services (the benchmarks add the room's spec)."""
    key = generate_signing_key()
    keys_dir = work / "keys"
    keys_dir.mkdir()
    for name, content in secret_data([key]).items():
        (keys_dir / name).write_text(content)
    issuer = TokenIssuer(KeySet.from_private_keys([key]), issuer="https://bench.veza")
    return issuer, {"VEZA_PLATFORM": "bench", "VEZA_DATABASE_URL": pg.url, "VEZA_NATS_URL": nats.url,
                    "VEZA_REDIS_URL": redis.url, "VEZA_JWT_ISSUER": "https://bench.veza",
                    "VEZA_JWT_KEYS_DIR": str(keys_dir), "VEZA_LOG_LEVEL": "WARNING"}


async def start_veza(env: dict[str, str], room: str, n: int = 2, log_dir: Path | None = None) -> Servers:
    ports = [free_port() for _ in range(n)]
    procs = []
    for i, port in enumerate(ports):
        log = open((log_dir or Path(tempfile.gettempdir())) / f"chat-{room}-{i}.log", "ab")  # noqa: SIM115
        profile = os.environ.get("CHAT_BENCH_PROFILE_DIR")  # cProfile the workers (for development)
        prefix = ["-m", "cProfile", "-o", f"{profile}/{room}-{i}.prof"] if profile else []
        procs.append(subprocess.Popen(
            [sys.executable, *prefix, "-m", "veza_cli.main", "chat"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            # The workers run this checkout's code, as this script does (an explicit PYTHONPATH goes first).
            env={**os.environ, **env, "PYTHONPATH": os.pathsep.join(
                     p for p in (os.environ.get("PYTHONPATH"), str(ROOT / "workloads")) if p),
                 "VEZA_RESOURCE_NAME": room, "VEZA_HTTP_HOST": "127.0.0.1",
                 "VEZA_HTTP_PORT": str(port)}))
        log.close()
    for port, proc in zip(ports, procs, strict=True):
        await wait_ready(port, proc)
    return Servers(procs, ports)


# -- scenarios -----------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 2)


async def fanout_run(servers: Servers, room: str, sockets: int, rate: float, seconds: float,
                     tokens: list[str] | None, *, bare: bool) -> dict[str, Any]:
    stats = Stats()
    path = f"/chat/{room}/ws"
    rss0 = servers.rss()
    clients: list[WsClient] = []
    gate = asyncio.Semaphore(100)

    async def one(i: int) -> None:
        async with gate:
            port = servers.ports[i % len(servers.ports)]
            clients.append(await ws_connect(port, path, tokens[i] if tokens else None, stats, probe=i < 100))

    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(sockets)))
    say(f"  {sockets} sockets connected in {time.monotonic() - started:.1f} s")
    senders = [await ws_connect(port, path, tokens[-1 - k] if tokens else None, stats, sender=True)
               for k, port in enumerate(servers.ports)]
    await asyncio.sleep(2.0)
    rss1 = servers.rss()
    loadgen0 = time.process_time()
    cpu0 = servers.cpu()
    backing0 = family_cpu(BACKING)
    stats.counting = True
    t0 = time.monotonic()
    total = int(rate * seconds)
    for i in range(total):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        payload = json.dumps({"type": "send", "cid": str(i), "text": f"{time.time()!r}|m{i}"}).encode()
        stats.sent_at[str(i)] = time.time()
        if bare:
            for s in senders:
                s.send(payload)
        else:
            senders[i % len(senders)].send(payload)
    expected = total * sockets
    deadline = time.monotonic() + 15
    while stats.events < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - t0
    cpu = servers.cpu() - cpu0
    backing = family_cpu(BACKING) - backing0
    loadgen = time.process_time() - loadgen0
    stats.counting = False
    for c in [*clients, *senders]:
        if c.transport is not None:
            c.transport.close()
    await asyncio.sleep(1.0)
    result = {
        "sockets": sockets, "messages": total, "offered_msgs_per_s": rate,
        "deliveries": stats.events, "deliveries_expected": expected,
        "deliveries_per_s": round(stats.events / elapsed),
        "server_cpu_s": round(cpu, 2),
        "deliveries_per_worker_core_s": round(stats.events / cpu) if cpu else None,
        "send_to_deliver_ms": {"p50": pct(stats.latencies, 0.5), "p99": pct(stats.latencies, 0.99)},
        "memory_per_connection_kb": round((rss1 - rss0) / sockets / 1024, 1),
        "loadgen_cpu_us_per_delivery": round(loadgen / max(1, stats.events) * 1e6, 2),
        "server_cpu_us_per_delivery": round(cpu / max(1, stats.events) * 1e6, 2),
        "backing_cpu_s": round(backing, 2),  # PostgreSQL + NATS + Redis (idle for the bare run)
        # The servers' and the load generator's CPU for one message, spread over every core of the machine: the
        # last delivery of a message cannot come sooner than this, whatever the server does.
        "cpu_floor_per_message_ms": round((cpu + backing + loadgen) / total / (os.cpu_count() or 1) * 1000, 1),
    }
    if not bare:
        result["ack_ms"] = {"p50": pct(stats.ack_latencies, 0.5), "p99": pct(stats.ack_latencies, 0.99)}
    return result


async def metric_samples(servers: Servers) -> list[Sample]:
    """Every sample of every server's /metrics."""
    samples: list[Sample] = []
    for port in servers.ports:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
        body = (await reader.read()).decode().split("\r\n\r\n", 1)[1]
        writer.close()
        samples += (s for family in text_string_to_metric_families(body) for s in family.samples)
    return samples


def sample_total(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


async def scrape(servers: Servers, name: str) -> tuple[float, float]:
    """(sum, count) of a histogram over the servers' /metrics."""
    samples = await metric_samples(servers)
    return sample_total(samples, f"{name}_sum"), sample_total(samples, f"{name}_count")


async def counter_total(servers: Servers, name: str) -> float:
    """A counter summed over the servers' /metrics (`name` with its `_total`)."""
    return sample_total(await metric_samples(servers), name)


async def durable_run(servers: Servers, room: str, tokens: list[str], seconds: float, inflight_total: int,
                      per_worker: int, db_url: str) -> dict[str, Any]:
    """Closed-loop durable sends: `inflight_total` sends in flight over the sockets (a new one for every ack)."""
    import asyncpg

    stats = Stats()
    path = f"/chat/{room}/ws"
    senders = [await ws_connect(port, path, tokens[k * len(servers.ports) + j], stats, sender=True)
               for k in range(per_worker) for j, port in enumerate(servers.ports)]
    index = {id(s): k for k, s in enumerate(senders)}
    windows = [inflight_total // len(senders) + (k < inflight_total % len(senders)) for k in range(len(senders))]
    await asyncio.sleep(1.0)
    stats.counting = True
    cpu0 = servers.cpu()
    backing0 = family_cpu(BACKING)
    loadgen0 = time.process_time()
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    counter = 0
    sent = [0] * len(senders)
    acked_by = [0] * len(senders)
    acked_in_window = [0] * len(senders)
    latencies: list[list[float]] = [[] for _ in senders]
    seqs: list[int] = []
    counting = True

    def pump() -> None:
        nonlocal counter
        for k, s in enumerate(senders):
            while sent[k] - acked_by[k] < windows[k]:
                cid = f"{k}-{counter}"
                counter += 1
                stats.sent_at[cid] = time.time()
                s.send(json.dumps({"type": "send", "cid": cid, "text": f"{time.time()!r}|durable"}).encode())
                sent[k] += 1

    original = WsClient.on_text

    def on_text(self: WsClient, buf: bytearray, start: int, end: int) -> None:
        if self.sender and buf.startswith(b'{"type":"ack"', start):
            k = index[id(self)]
            ack = json.loads(bytes(buf[start:end]))
            at = stats.sent_at.pop(ack["cid"], None)
            acked_by[k] += 1
            stats.acks += 1
            seqs.append(ack["seq"])
            if at is not None:
                latencies[k].append(time.time() - at)
            if counting:
                acked_in_window[k] += 1
            return
        original(self, buf, start, end)

    lags: list[float] = []

    async def lag_probe() -> None:  # how late this process's own loop runs (its share of the measured latency)
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.005)
            lags.append(time.monotonic() - t - 0.005)

    WsClient.on_text = on_text  # type: ignore[method-assign]
    probe = asyncio.get_running_loop().create_task(lag_probe())
    try:
        while time.monotonic() - t0 < seconds:
            pump()
            await asyncio.sleep(0.002)
        counting = False
        elapsed = time.monotonic() - t0
        cpu = servers.cpu() - cpu0
        backing = family_cpu(BACKING) - backing0
        loadgen = time.process_time() - loadgen0
        deadline = time.monotonic() + 15
        while stats.acks < sum(sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        WsClient.on_text = original  # type: ignore[method-assign]
        probe.cancel()
    for s in senders:
        if s.transport is not None:
            s.transport.close()
    commit = await scrape(servers, "veza_chat_commit_seconds")
    batch = await scrape(servers, "veza_chat_commit_batch_size")
    gap_fills = await counter_total(servers, "veza_chat_gap_fills_total")
    conn = await asyncpg.connect(db_url)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM chat_events WHERE room = $1", room)
        last = await conn.fetchval("SELECT last_seq FROM chat_rooms WHERE room = $1", room)
    finally:
        await conn.close()
    every = [x for per in latencies for x in per]
    rates = [n / elapsed for n in acked_in_window]
    return {"sockets": len(senders), "inflight": sum(windows), "window_per_socket": [min(windows), max(windows)],
            "durable_msgs_per_s": round(sum(acked_in_window) / elapsed), "acked": stats.acks, "sent": sum(sent),
            "stored": stored, "last_seq": last,
            # every ack a distinct seq, and the stored seqs exactly 1..last: nothing lost, duplicated or skipped
            "acks_distinct_seqs": len(set(seqs)) == len(seqs), "gapless": stored == last == len(set(seqs)),
            "server_cpu_s": round(cpu, 2), "backing_cpu_s": round(backing, 2), "loadgen_cpu_s": round(loadgen, 2),
            "loadgen_loop_lag_ms": {"p50": pct(lags, 0.5), "p99": pct(lags, 0.99)},
            "group_commits": int(commit[1]), "mean_commit_ms": round(commit[0] / max(1, commit[1]) * 1000, 2),
            "mean_batch": round(batch[0] / max(1, batch[1]), 1),
            # Events a worker read from PostgreSQL because the other's commit had not come over NATS within the
            # sequencer's grace, per event committed: what fan-out was too slow for.
            "gap_fills_per_event": round(gap_fills / max(1.0, batch[0]), 3),
            "ack_ms": {"p50": pct(every, 0.5), "p99": pct(every, 0.99), "max": pct(every, 1.0)},
            # Fairness: each socket's acknowledged sends per second and its own ack p99 (a starved sender shows as
            # a low rate and a high p99); `spread` is the fastest socket's rate over the slowest's.
            "per_socket": {"msgs_per_s": [round(min(rates)), round(max(rates))],
                           "spread": round(max(rates) / min(rates), 3) if min(rates) else None,
                           "ack_p99_ms": [min(pct(x, 0.99) or 0 for x in latencies),
                                          max(pct(x, 0.99) or 0 for x in latencies)]},
            "loadavg": [round(load0, 2), round(os.getloadavg()[0], 2)]}


PLAIN_INSERT = ("INSERT INTO plain_events (room, seq, kind, author, author_name, client_msg_id, body)"
                " SELECT $1, $2 + u.n, 'message', u.author, u.author, u.cid, u.body"
                " FROM unnest($3::text[], $4::text[], $5::text[]) WITH ORDINALITY AS u(author, cid, body, n)"
                " RETURNING seq, id, created_at")


async def plain_inserts(db_url: str, room: str, batch: int, seconds: float, sockets: int) -> dict[str, Any]:
    """The baseline: the rows of the durable run (the same authors, client ids and texts) inserted by a plain
    asyncpg loop, `batch` rows per statement (the run's mean group commit), one statement per commit, for as long
    as the run: what PostgreSQL takes with nothing in front of it (no sockets, no sequencing lock, no fan-out).
    Into a copy of chat_events (its columns, defaults, constraints and indexes), dropped afterwards: a million rows
    left in chat_events would have autovacuum working through the next round."""
    import asyncpg

    conn = await asyncpg.connect(db_url)
    await conn.execute("CREATE TABLE plain_events (LIKE chat_events INCLUDING ALL)")
    try:
        rows = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            authors = [f"d{(rows + i) % sockets}" for i in range(batch)]
            cids = [f"{(rows + i) % sockets}-{rows + i}" for i in range(batch)]
            bodies = [f"{time.time()!r}|durable"] * batch
            await conn.fetch(PLAIN_INSERT, room, rows, authors, cids, bodies)
            rows += batch
        elapsed = time.monotonic() - t0
    finally:
        await conn.execute("DROP TABLE plain_events")
        await conn.close()
    return {"batch": batch, "rows": rows, "rows_per_s": round(rows / elapsed)}


def pg_test_fsync(bindir: Path, work: Path) -> dict[str, Any]:
    """`pg_test_fsync` (shipped with the embedded PostgreSQL) on the data directory's filesystem: microseconds per
    8 kB write and sync for each wal_sync_method (fdatasync is Linux's default)."""
    exe = bindir / "pg_test_fsync"
    if not exe.exists():
        return {"skipped": "pg_test_fsync not found"}
    out = subprocess.run([str(exe), "-s", "1", "-f", str(work / "fsync.test")], capture_output=True, text=True,
                         check=False, timeout=120).stdout
    first = out.split("Compare file sync methods using two", 1)[0]
    found: dict[str, Any] = {}
    for line in first.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[-1] == "usecs/op":
            found[f"{parts[0]}_us"] = int(float(parts[-2]))
    return found


async def set_durability(db_url: str, on: bool) -> dict[str, str]:
    """The local PostgreSQL runs without fsync (a disposable dev server); `--fsync` turns syncing back on for the
    durable runs, as a production server commits."""
    import asyncpg

    conn = await asyncpg.connect(db_url)
    try:
        if on:
            for name in ("fsync", "synchronous_commit", "full_page_writes"):
                await conn.execute(f"ALTER SYSTEM SET {name} = on")
            await conn.execute("SELECT pg_reload_conf()")
            await asyncio.sleep(0.5)
        return {name: await conn.fetchval(f"SHOW {name}") for name in ("fsync", "synchronous_commit")}
    finally:
        await conn.close()


async def durable_runs(env: dict[str, str], issuer: TokenIssuer, work: Path, args: argparse.Namespace,
                       pg: PostgresService) -> dict[str, Any]:
    """`--durable-runs` rounds of durable sends, each followed by its baseline (plain inserts of the same rows with
    the same batching), then the spread over the rounds."""
    tokens = [issuer.issue(f"d{i}", audience="veza-chat", ttl=3600) for i in range(2 * args.durable_sockets)]
    out: dict[str, Any] = {"pg_test_fsync": pg_test_fsync(pg.bin, work),
                           "postgres": await set_durability(pg.url, args.fsync)}
    say(f"  pg_test_fsync {out['pg_test_fsync']}, PostgreSQL {out['postgres']}")
    runs = []
    for n in range(args.durable_runs):
        room = "durable" if n == 0 else f"durable{n + 1}"
        say(f"[durable {n + 1}/{args.durable_runs}] {args.durable_seconds} s, {args.inflight} sends in flight over "
            f"{2 * args.durable_sockets} sockets, 2 workers")
        veza = await start_veza(env, room, log_dir=work)
        try:
            r = await durable_run(veza, room, tokens, args.durable_seconds, args.inflight, args.durable_sockets,
                                  pg.url)
        finally:
            veza.stop()
        plain = await plain_inserts(pg.url, f"{room}-plain", max(1, round(r["mean_batch"])), args.durable_seconds,
                                    2 * args.durable_sockets)
        r["plain_asyncpg"] = plain
        r["ratio_to_plain"] = round(r["durable_msgs_per_s"] / plain["rows_per_s"], 3) if plain["rows_per_s"] else None
        say(f"  {r}")
        runs.append(r)
    out["runs"] = runs
    out["durable_msgs_per_s"] = [r["durable_msgs_per_s"] for r in runs]
    out["ack_p99_ms"] = [r["ack_ms"]["p99"] for r in runs]
    out["per_socket_spread"] = [r["per_socket"]["spread"] for r in runs]
    out["ratio_to_plain"] = [r["ratio_to_plain"] for r in runs]
    out["loadavg"] = [r["loadavg"] for r in runs]
    return out


async def tracing_cost(env: dict[str, str], issuer: TokenIssuer, work: Path, args: argparse.Namespace,
                       db_url: str) -> dict[str, Any]:
    """Durable sends with tracing off, then exporting to Jaeger at 0, 1 and 100 %: per sampling ratio, the
    messages acknowledged per worker CPU second, averaged over two rounds (the second in reverse order, so
    warming up and the machine's drift do not favour one setting)."""
    if not (tools_bin_dir() / "jaeger").exists():
        say("[tracing] skipped: jaeger is not built (hack/build-tools.sh jaeger)")
        return {"skipped": "jaeger not built"}
    settings = {"off": None, "0": "0", "0.01": "0.01", "1": "1.0"}
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in settings}
    tokens = [issuer.issue(f"t{i}", audience="veza-chat", ttl=3600) for i in range(2 * args.durable_sockets)]
    with JaegerService(work) as jaeger:
        order = list(settings)
        for n, label in enumerate(order + order[::-1]):
            ratio = settings[label]
            traced = {} if ratio is None else {
                "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": ratio}
            room = f"traced{n}"
            say(f"[tracing] {label}: {args.tracing_seconds} s of durable sends")
            veza = await start_veza({**env, **traced}, room, log_dir=work)
            try:
                r = await durable_run(veza, room, tokens, args.tracing_seconds, args.inflight, args.durable_sockets,
                                      db_url)
            finally:
                veza.stop()
            r["msgs_per_worker_cpu_s"] = round(r["acked"] / r["server_cpu_s"]) if r["server_cpu_s"] else None
            say(f"  {r['durable_msgs_per_s']} msg/s, {r['msgs_per_worker_cpu_s']} per worker CPU s")
            runs[label].append(r)
        services = jaeger.services()  # the traced runs did export

    def mean(label: str, key: str) -> float:
        values = [r[key] for r in runs[label] if r[key]]
        return sum(values) / len(values) if values else 0.0

    off = mean("off", "msgs_per_worker_cpu_s")
    return {"services_in_jaeger": services, **{label: {
        "durable_msgs_per_s": round(mean(label, "durable_msgs_per_s")),
        "msgs_per_worker_cpu_s": round(mean(label, "msgs_per_worker_cpu_s")),
        "ack_p99_ms": [r["ack_ms"]["p99"] for r in runs[label]],
        "ratio_to_off": round(mean(label, "msgs_per_worker_cpu_s") / off, 3) if off else None}
        for label in settings}}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    work = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    say(f"services in {work}")
    pg, nats, redis = PostgresService(work), NatsService(work), RedisService(work)
    for svc in (pg, nats, redis):
        svc.start()
        assert svc.process is not None
        BACKING.append(svc.process.pid)
    issuer, env = worker_env(work, pg, nats, redis)
    env["VEZA_RESOURCE_SPEC"] = json.dumps({"limits": {"messagesPerMinute": 1e9, "maxMembers": 100000}})
    results: dict[str, Any] = {"bench": "chat", "cpus": os.cpu_count(),
                               "event_loop": event_loop_kind(),
                               "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
    try:
        for sockets, rate in args.loads:
            label = f"{sockets // 1000}k" if sockets >= 1000 else str(sockets)
            tokens = [issuer.issue(f"u{i}", audience="veza-chat", ttl=3600, name=f"user {i}")
                      for i in range(sockets + 2)]
            say(f"[{label}] bare aiohttp broadcast, {sockets} sockets, {rate} msg/s for {args.seconds} s")
            bare = await start_bare()
            try:
                b = await fanout_run(bare, "bench", sockets, rate, args.seconds, None, bare=True)
            finally:
                bare.stop()
            say(f"  {b}")
            room = f"fan{label}"
            say(f"[{label}] veza chat, 2 workers")
            veza = await start_veza(env, room, log_dir=work)
            try:
                v = await fanout_run(veza, room, sockets, rate, args.seconds, tokens, bare=False)
            finally:
                veza.stop()
            say(f"  {v}")
            ratio = (v["deliveries_per_worker_core_s"] / b["deliveries_per_worker_core_s"]
                     if v["deliveries_per_worker_core_s"] and b["deliveries_per_worker_core_s"] else None)
            all_cpu = v["server_cpu_s"] + v["backing_cpu_s"]
            ratio_all = (v["deliveries"] / all_cpu / b["deliveries_per_worker_core_s"]
                         if all_cpu and b["deliveries_per_worker_core_s"] else None)
            results[label] = {"bare": b, "veza": v, "ratio_per_core": round(ratio, 3) if ratio else None,
                              "ratio_per_core_incl_backing": round(ratio_all, 3) if ratio_all else None}
        if not args.tracing_only:
            results["durable"] = await durable_runs(env, issuer, work, args, pg)
        if not args.durable_only:
            results["tracing"] = await tracing_cost(env, issuer, work, args, pg.url)
    finally:
        for svc in (redis, nats, pg):
            svc.stop()
        shutil.rmtree(work, ignore_errors=True)
    results["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    big = results.get("5k") or results.get("1k")
    results["summary"] = {
        "ratio_per_core_1k": results.get("1k", {}).get("ratio_per_core"),
        "ratio_per_core_5k": results.get("5k", {}).get("ratio_per_core"),
        "p99_send_to_deliver_ms_5k": big["veza"]["send_to_deliver_ms"]["p99"] if isinstance(big, dict) else None,
        "p99_bare_ms_5k": big["bare"]["send_to_deliver_ms"]["p99"] if isinstance(big, dict) else None,
        "cpu_floor_per_message_ms_5k": big["veza"]["cpu_floor_per_message_ms"] if isinstance(big, dict) else None,
        "durable_msgs_per_s": results.get("durable", {}).get("durable_msgs_per_s"),
        "durable_ack_p99_ms": results.get("durable", {}).get("ack_p99_ms"),
        "durable_per_socket_spread": results.get("durable", {}).get("per_socket_spread"),
        "durable_ratio_to_plain": results.get("durable", {}).get("ratio_to_plain"),
        "tracing_ratio_to_off": {k: v.get("ratio_to_off") for k, v in results.get("tracing", {}).items()
                                 if isinstance(v, dict)},
        "targets": {"ratio": ">= 0.6", "p99_ms_5k": "< 50", "durable_msgs_per_s": ">= 5000",
                    "durable_ack_p99_ms": "<= 100", "tracing_ratio_to_off": {"0.01": ">= 0.9"}},
    }
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="200 and 1000 sockets, shorter windows")
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window per fan-out run")
    parser.add_argument("--durable-seconds", type=float, default=10.0)
    parser.add_argument("--durable-only", action="store_true", help="only the durable sends run")
    parser.add_argument("--durable-sockets", type=int, default=4, help="sending sockets per worker (durable run)")
    parser.add_argument("--inflight", type=int, default=500, help="sends in flight over all sockets (durable run)")
    parser.add_argument("--durable-runs", type=int, default=1, help="rounds of durable sends (each with its baseline)")
    parser.add_argument("--fsync", action="store_true",
                        help="durable runs with fsync and synchronous_commit on (the local server runs without)")
    parser.add_argument("--tracing-only", action="store_true", help="only the cost of tracing runs")
    parser.add_argument("--tracing-seconds", type=float, default=6.0, help="window per tracing run")
    ns = parser.parse_args()
    if ns.bare_server:
        bare_server(ns.bare_server)
        sys.exit(0)
    # Offered loads stay below saturation of a 2-vCPU machine that also runs the load generator,
    # PostgreSQL and NATS, so latencies are those of a working system, not of a queue.
    ns.loads = [(200, 20.0), (1000, 5.0)] if ns.quick else [(1000, 15.0), (5000, 3.0)]
    if ns.durable_only or ns.tracing_only:
        ns.loads = []
    if ns.quick:
        ns.seconds, ns.durable_seconds = 5.0, 5.0
    out = asyncio.run(main(ns))
    print(json.dumps(out, separators=(",", ":")))
