"""Stream worker benchmark, with Debian's ffmpeg and icecast2 as baselines measured in the same run.

    .venv/bin/python bench/stream_bench.py [--steps 1000,2000,3000,4000] [--window 8] [--only listeners,latency]
    .venv/bin/python bench/stream_bench.py --profile 1000     # py-spy of the worker serving 1000 listeners

1. transcode speed (x realtime, one thread) of each rendition: the worker's pipeline vs `ffmpeg -threads 1`, best of
   five interleaved runs each, with and without ffmpeg's start-up CPU. ffmpeg at its best: the same encoders
   (Debian's libmp3lame and libopus, FFmpeg's AAC), one thread like the worker's pipeline (the figure is per core),
   writing to /dev/null (no disk), its best run, and its start (loading its libraries) taken
   out in `ratio_steady`;
2. listeners of a 128 kbps MP3 stream: one `veza stream` process pinned to one core vs icecast2 pinned to the same
   core. Listeners are added in steps (icecast2 at 100/s: its listen backlog is 5) by load generator processes pinned
   to the other cores (asyncio protocols to connect, then one readv() per listener every 0.5 s); each step is
   measured over a window and the ramp stops at the first step where a listener lagged by more than 1 s of audio over
   the window (half the 2 s burst its player starts with). Only listeners that keep up count: reports the most
   listeners that all kept up (and the most that kept up at any step), server CPU per listener-second (above the
   server's idle CPU, per listener that kept up; `server_user_system_per_s` splits the server's CPU: a write to a
   socket is mostly the kernel's), RSS per connected listener, and the load generators' own CPU (they must stay
   cheaper than the server). icecast2 at its best: fed by `ffmpeg -re ... -flush_packets 1 icecast://`,
   one MP3 frame per send as it falls due, so it reads a steady source and writes each listener evenly. icecast2 2.4
   always writes a listener 1,400-byte pieces (a compiled-in size), ~11.4 writes per listener-second at 128 kbps,
   whatever the source does; a bursty source (`-flush_packets 0`, 32 KiB at a time) keeps that count and costs it
   ~25 % more CPU per listener. Its burst (2 s, like the worker's) and queue (256 KiB, the worker's drop threshold)
   change nothing measurable; its client limit is above the ramp and its log level keeps it to errors and warnings.
   The worker writes each listener every 0.5 s (its default write interval), ~2 writes per listener-second;
3. source-to-listener latency of a live source: progressive (bytes arriving) and HLS (first listed segment). The
   source is silence with 12 tones of 0.5 s, each at another phase of the worker's write schedule; a progressive
   listener notes when each arrives (`progressive_each_s`; `progressive_max_s` is the worst case the write interval
   adds), the HLS watchers the first;
4. the cost of tracing (`--only tracing`, part of the default run): the worker serving `--tracing-listeners` with
   tracing off, then exporting to a local Jaeger at 0 %, 1 % and 100 % sampling (two rounds, the second in reverse
   order); CPU per listener-second as ratios to off (`tracing.<ratio>.ratio_to_off`, above 1: tracing costs).
On a shared machine the servers compete with everything else on their core: the step ramp then stops early for both,
and CPU per listener-second is the steadier figure. Progress goes to stderr; the last stdout line is one JSON
object, with the load average at the start and the end (`loadavg_at_start`, `loadavg_at_end`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "workloads"), str(ROOT)]

from loadgen import Generators, cpu_seconds, raise_fd_limit, user_system  # noqa: E402
from veza_local.services import free_port  # noqa: E402
from veza_stream.settings import WRITE_INTERVAL  # noqa: E402
from veza_stream.sources import decode  # noqa: E402
from veza_stream.spec import Rendition  # noqa: E402
from veza_stream.transcoder import Transcoder  # noqa: E402

FFMPEG_CODECS = {"mp3": ["-c:a", "libmp3lame"], "aac": ["-c:a", "aac"], "opus": ["-c:a", "libopus"]}
FFMPEG_FORMATS = {"mp3": "mp3", "aac": "adts", "opus": "ogg"}


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def need_tools() -> None:
    missing = [t for t in ("ffmpeg", "icecast2") if shutil.which(t) is None]
    if missing:
        say(f"missing baselines: {' '.join(missing)}; install with: apt-get install -y ffmpeg icecast2")
        sys.exit(2)


def write_input(path: Path, seconds: float) -> None:
    """Stereo 44.1 kHz WAV with a chord (something for the encoders to chew on)."""
    rate = 44100
    t = np.arange(int(seconds * rate)) / rate
    x = (0.2 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 1234 * t)
         + 0.05 * np.random.default_rng(1).standard_normal(len(t))).astype(np.float32)
    with av.open(str(path), "w", format="wav") as c:
        s = c.add_stream("pcm_s16le", rate=rate, layout="stereo")
        for i in range(0, len(x), 4096):
            f = av.AudioFrame.from_ndarray(np.stack([x[i:i + 4096]] * 2), format="fltp", layout="stereo")
            f.sample_rate = rate
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)


def bench_transcode(wav: Path, seconds: float, runs: int) -> dict[str, Any]:
    """Best of `runs` interleaved runs on each side (the least-disturbed run of a noisy machine).

    ffmpeg's CPU time includes its start (loading its libraries, about 0.1 s here): `ratio` compares
    against the CLI as users run it; `ratio_steady` subtracts the start measured on a 0.1 s input.
    """
    data = wav.read_bytes()
    tiny = wav.with_name("tiny.wav")
    write_input(tiny, 0.1)
    out: dict[str, Any] = {}

    def ffmpeg_cpu(path: Path, codec: str, kbps: int) -> float:
        cmd = ["ffmpeg", "-nostdin", "-v", "error", "-threads", "1", "-i", str(path), "-ar", "48000",
               *FFMPEG_CODECS[codec], "-b:a", f"{kbps}k", "-f", FFMPEG_FORMATS[codec], "-y", "/dev/null"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(cmd, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    for codec, kbps in (("mp3", 128), ("aac", 128), ("opus", 96)):
        rendition = Rendition(name=codec, codec=codec, bitrateKbps=kbps)
        ours, theirs, start = [], [], []
        for _ in range(runs):
            started = time.process_time()
            transcoder = Transcoder([rendition])
            for frame, _ in decode(data):
                transcoder.encode(frame)
            ours.append(time.process_time() - started)
            theirs.append(ffmpeg_cpu(wav, codec, kbps))
            start.append(ffmpeg_cpu(tiny, codec, kbps))
        ffmpeg_start = sorted(start)[len(start) // 2]
        out[codec] = {"veza_x_realtime": round(seconds / min(ours), 1),
                      "ffmpeg_x_realtime": round(seconds / min(theirs), 1),
                      "ratio": round(min(theirs) / min(ours), 2),
                      "ratio_steady": round((min(theirs) - ffmpeg_start) / min(ours), 2),
                      "ffmpeg_start_cpu_s": round(ffmpeg_start, 3), "runs": runs}
        say(f"transcode {codec}: veza {seconds / min(ours):.0f}x, ffmpeg {seconds / min(theirs):.0f}x realtime "
            f"(ratio {out[codec]['ratio']}, without ffmpeg's start {out[codec]['ratio_steady']})")
    return out


# -- listeners -------------------------------------------------------------------------------------------------
# The load generator: raw asyncio protocols (no HTTP client library), several processes pinned away from the
# server's core, driven over stdin/stdout by the benchmark. Commands: "add N RATE" (open N more listeners at RATE
# connections per second, a bounded number of retries each), "mark" (start a measuring window), "report" (per
# listener bytes per second since the mark, and the generator's own CPU), "quit".
LOADGEN = r"""
import asyncio, json, os, resource, sys, time
host, port, path, SWEEP = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
REQ = f"GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: bench\r\n\r\n".encode()
h = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; resource.setrlimit(resource.RLIMIT_NOFILE, (h, h))
class L(asyncio.Protocol):
    # asyncio only connects and sends the request; reading is a sweep every SWEEP seconds with one readv() into a
    # shared buffer per listener (the kernel buffers the stream meanwhile), so a listener costs one system call and
    # a few Python operations per sweep however often the server writes: far less than the server's writes.
    __slots__ = ("n", "lost", "base", "fd", "t")
    def __init__(s): s.n = 0; s.lost = False; s.base = 0; s.fd = -1
    def connection_made(s, t):
        t.write(REQ); t.pause_reading(); s.fd = t.get_extra_info("socket").fileno(); s.t = t
    def connection_lost(s, e): s.lost = True
async def sweep(ls):
    buf = [bytearray(1 << 18)]
    while True:
        await asyncio.sleep(SWEEP)
        for p in ls:
            if p.lost: continue
            try:
                n = os.readv(p.fd, buf)
            except BlockingIOError:
                continue
            except OSError:
                p.lost = True; continue
            if n == 0: p.lost = True
            p.n += n
async def main():
    loop = asyncio.get_running_loop(); ls = []; failed = 0; t0 = time.monotonic()
    sweeper = asyncio.ensure_future(sweep(ls))
    async def one():
        nonlocal failed
        for attempt in range(4):
            try:
                _, p = await asyncio.wait_for(loop.create_connection(L, host, port), 10)
                ls.append(p); return
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.2 * (attempt + 1))
        failed += 1
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line or line[0] == "quit":
            break
        if line[0] == "add":
            n, rate = int(line[1]), float(line[2]); start = time.monotonic(); tasks = []
            for i in range(n):
                await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
                tasks.append(asyncio.ensure_future(one()))
            await asyncio.gather(*tasks)
            out = {"listeners": len(ls), "failed": failed, "seconds": time.monotonic() - start}
        elif line[0] == "mark":
            for p in ls: p.base = p.n
            t0 = time.monotonic(); out = {}
        else:
            dt = time.monotonic() - t0
            rates = sorted(-1.0 if p.lost else (p.n - p.base) / dt for p in ls)
            ru = resource.getrusage(resource.RUSAGE_SELF)
            out = {"rates": rates, "cpu": ru.ru_utime + ru.ru_stime, "seconds": dt}
        print(json.dumps(out), flush=True)
asyncio.run(main())
"""

STREAM_BYTES_PER_S = 128_000 / 8
SWEEP = 0.5  # seconds between the load generators' read sweeps
# A listener keeps up when, over a measuring window, it lags by less than LAG_S seconds of audio: half the 2 s burst a
# player starts with, so its buffer never runs dry.
LAG_S = 1.0


NICE = 0  # --nice: priority of the servers under test and the load generators (all of them alike)


def renice(pid: int, nice: int) -> None:
    """Set the priority of a process and all its threads (icecast2 and the worker are multi-threaded)."""
    if not nice:
        return
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, int(task.name), nice)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (its threads share it)."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class LoadGen(Generators):
    def __init__(self, port: int, path: str, procs: int, cpus: set[int]) -> None:
        super().__init__([[sys.executable, "-c", LOADGEN, "127.0.0.1", str(port), path, str(SWEEP)]
                          for _ in range(procs)], cpus)
        for p in self.procs:
            renice(p.pid, NICE)

    def add(self, n: int, rate: float) -> tuple[int, int]:
        k = len(self.procs)
        res = self.ask(*(f"add {n // k + (i < n % k)} {rate / k}" for i in range(k)))
        return sum(r["listeners"] for r in res), sum(r["failed"] for r in res)

    def window(self, seconds: float) -> tuple[list[float], float]:
        self.ask(*["mark"] * len(self.procs))
        time.sleep(seconds)
        res = self.ask(*["report"] * len(self.procs))
        return sorted(x for r in res for x in r["rates"]), sum(r["cpu"] for r in res)



def ramp(name: str, pid: int, port: int, path: str, steps: list[int], rate: float, window: float,
         procs: int, server_cpu: int, metrics: Any = None) -> dict[str, Any]:
    """Add listeners step by step; measure each step over a window; stop at the first step where one falls behind."""
    others = (os.sched_getaffinity(0) - {server_cpu}) or {server_cpu}
    os.sched_setaffinity(pid, {server_cpu})  # one server process on one core
    renice(pid, NICE)
    cpu0, rss0 = cpu_seconds(pid), rss_bytes(pid)
    time.sleep(window)
    idle_cpu = (cpu_seconds(pid) - cpu0) / window  # veza: the encoder; icecast2: nothing much
    gen = LoadGen(port, path, procs, others)
    results: list[dict[str, Any]] = []
    try:
        have = 0
        for target in steps:
            connected, failed = gen.add(target - have, rate)
            have = target
            time.sleep(2)  # bursts delivered, connections settled
            split0 = user_system(pid)
            _, g0 = gen.window(0)
            t0 = time.monotonic()
            rates, g1 = gen.window(window)
            dt = time.monotonic() - t0
            split1, rss = user_system(pid), rss_bytes(pid)
            split = [round((b - a) / dt, 3) for a, b in zip(split0, split1, strict=True)]
            behind = sum(r * dt < (dt - LAG_S) * STREAM_BYTES_PER_S for r in rates)
            kept_up = len(rates) - behind
            cpu_per_s = (sum(split1) - sum(split0)) / dt
            # CPU is per listener that kept up (one that falls behind is not served, whatever it costs); memory is
            # per connected listener (every one holds its connection's memory).
            step: dict[str, Any] = {"listeners": connected, "failed_connects": failed, "behind": behind,
                    "kept_up": kept_up,
                    "slowest_kbps": round(rates[0] * 8 / 1000, 1) if rates else None,
                    "median_kbps": round(rates[len(rates) // 2] * 8 / 1000, 1) if rates else None,
                    "server_cpu_per_s": round(cpu_per_s, 3), "server_user_system_per_s": split,
                    "loadgen_cpu_per_s": round((g1 - g0) / dt, 3),
                    "rss_per_listener_kB": round((rss - rss0) / max(connected, 1) / 1024, 2),
                    "cpu_us_per_listener_s": round(max(cpu_per_s - idle_cpu, 0) / max(kept_up, 1) * 1e6, 2)}
            if metrics is not None:
                try:
                    step.update(metrics())
                except OSError as exc:
                    step["metrics_error"] = repr(exc)
            say(f"  {name}: {step}")
            results.append(step)
            if behind or failed:
                break
    finally:
        gen.close()
    ok = [r for r in results if not r["behind"] and not r["failed_connects"]]
    best = ok[-1] if ok else (results[-1] if results else {})
    return {"max_listeners_all_kept_up": best.get("listeners", 0) if ok else 0,
            "most_listeners_kept_up": max((r["kept_up"] for r in results), default=0),
            "capped_by_ramp": bool(ok) and len(ok) == len(steps),
            "idle_cpu_per_s": round(idle_cpu, 3),
            "rss_per_listener_kB": best.get("rss_per_listener_kB"),
            "cpu_us_per_listener_s": best.get("cpu_us_per_listener_s"),
            "loadgen_cpu_per_s": best.get("loadgen_cpu_per_s"), "server_cpu_per_s": best.get("server_cpu_per_s"),
            "server_user_system_per_s": best.get("server_user_system_per_s"),
            "steps": results}


def wait_port(port: int, timeout: float = 20) -> None:
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open")


def bench_icecast(tmp: Path, mp3: Path, args: argparse.Namespace) -> dict[str, Any]:
    with running_icecast(mp3, max(args.steps) + 100) as (pid, port):
        say(f"icecast2: up to {max(args.steps)} listeners at {args.icecast_rate:.0f}/s (its listen backlog is 5)")
        return ramp("icecast2", pid, port, "/bench.mp3", args.steps, args.icecast_rate, args.window,
                    args.loadgens, args.server_cpu)


@contextlib.contextmanager
def running_icecast(mp3: Path, clients: int, loglevel: int = 2) -> Iterator[tuple[int, int]]:
    """icecast2 at its best, fed `mp3` in a loop by ffmpeg, for up to `clients` listeners: (its pid, its port)."""
    port = free_port()
    # icecast2 refuses to run as root and drops to nobody after reading its configuration; its log directory (and
    # every directory above it) must then be reachable by nobody. The benchmark's temporary directory is 0700, which
    # is why icecast2 used to exit at start (and the ffmpeg source then saw "connection reset").
    ice_dir = Path(tempfile.mkdtemp(prefix="stream-bench-icecast-"))
    os.chmod(ice_dir, 0o777)  # noqa: S103 (a temporary log dir for the benchmark)
    conf = ice_dir / "icecast.xml"
    owner = "<changeowner><user>nobody</user><group>nogroup</group></changeowner>" if os.getuid() == 0 else ""
    # The same burst as the worker's (2 s of 128 kbps), a queue as deep as the worker's drop threshold.
    conf.write_text(f"""<icecast><hostname>127.0.0.1</hostname><limits><clients>{clients}</clients>
<sources>2</sources><burst-size>32000</burst-size><queue-size>262144</queue-size></limits>
<authentication><source-password>benchpw</source-password><admin-password>benchpw</admin-password></authentication>
<listen-socket><port>{port}</port><bind-address>127.0.0.1</bind-address></listen-socket>
<paths><logdir>{ice_dir}</logdir><webroot>/usr/share/icecast2/web</webroot></paths>
<logging><loglevel>{loglevel}</loglevel></logging><security><chroot>0</chroot>{owner}</security></icecast>""")
    ice = subprocess.Popen(["icecast2", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           preexec_fn=raise_fd_limit)
    src = None
    try:
        wait_port(port)
        # ffmpeg sends each MP3 frame (418 bytes) as it falls due (-flush_packets 1), so icecast2 reads a steady
        # trickle and writes each listener its 1,400-byte pieces evenly, ~11.4 per listener-second. With
        # -flush_packets 0 (whole 32 KiB I/O buffers) the source is bursty and icecast2 costs ~25 % more per
        # listener for the same number of sends.
        src = subprocess.Popen(["ffmpeg", "-nostdin", "-v", "error", "-re", "-stream_loop", "-1", "-i", str(mp3),
                                "-c", "copy", "-flush_packets", "1", "-content_type", "audio/mpeg", "-f", "mp3",
                                f"icecast://source:benchpw@127.0.0.1:{port}/bench.mp3"])
        time.sleep(3)
        if ice.poll() is not None or src.poll() is not None:
            raise RuntimeError(f"icecast2 or its ffmpeg source exited; see {ice_dir}/error.log")
        yield ice.pid, port
    finally:
        for p in (src, ice):
            if p is not None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        shutil.rmtree(ice_dir, ignore_errors=True)


def encode_mp3(wav: Path, mp3: Path) -> None:
    """The listener benchmarks' track: 128 kbps MP3 at 48 kHz, by ffmpeg."""
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(wav), "-c:a", "libmp3lame", "-b:a", "128k",
                    "-ar", "48000", "-y", str(mp3)], check=True)


def track_bucket(tmp: Path, mp3: Path) -> tuple[Any, dict[str, str]]:
    """An S3 endpoint (stop it when done) holding `mp3` as `bench/input.mp3`, and the worker's S3 settings for it."""
    import boto3

    from veza_local.services import S3Service

    s3 = S3Service(tmp / "s3").start()
    client = boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1",
                          aws_access_key_id=s3.access_key, aws_secret_access_key=s3.secret_key)
    client.create_bucket(Bucket="veza")
    client.put_object(Bucket="veza", Key="bench/input.mp3", Body=mp3.read_bytes())
    return s3, {"VEZA_S3_ENDPOINT": s3.url, "VEZA_S3_BUCKET": "veza", "AWS_ACCESS_KEY_ID": s3.access_key,
                "AWS_SECRET_ACCESS_KEY": s3.secret_key}


# The channel the listener benchmarks serve: the bench track in a loop, one MP3 rendition, progressive only.
MP3_CHANNEL: dict[str, Any] = {"source": {"type": "playlist", "playlist": {"tracks": ["bench/input.mp3"]}},
                               "renditions": [{"name": "mp3", "codec": "mp3", "bitrateKbps": 128}],
                               "delivery": {"hls": {"enabled": False}}}


@contextlib.contextmanager
def running_veza(tmp: Path, env: dict[str, str]) -> Iterator[tuple[int, int]]:
    """A `veza stream` worker serving MP3_CHANNEL, its first audio out (listeners get a burst at once): (its pid,
    its port). Stopped with SIGTERM on the way out."""
    proc, port = start_veza(tmp, MP3_CHANNEL, env)
    try:
        time.sleep(2)
        yield proc.pid, port
    finally:
        stop(proc)


def start_veza(tmp: Path, spec: dict[str, Any], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    full = {**os.environ, "VEZA_RESOURCE_NAME": "bench", "VEZA_RESOURCE_SPEC": json.dumps(spec),
            "VEZA_HTTP_HOST": "127.0.0.1", "VEZA_HTTP_PORT": str(port), "VEZA_LOG_LEVEL": "WARNING",
            "VEZA_SHUTDOWN_GRACE_SECONDS": "1", **env}
    proc = subprocess.Popen([str(ROOT / ".venv/bin/veza"), "stream"], env=full, stdout=subprocess.DEVNULL,
                            stderr=(tmp / f"veza-{port}.log").open("wb"),
                            preexec_fn=raise_fd_limit)
    wait_port(port)
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def scrape(port: int, name: str) -> float:
    """Sum of a counter or gauge on the worker's /metrics."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def bench_veza_listeners(tmp: Path, s3: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    with running_veza(tmp, s3) as (pid, port):
        try:
            say(f"veza stream: up to {max(args.steps)} listeners at {args.veza_rate:.0f}/s")
            return ramp("veza", pid, port, "/stream/bench/mp3", args.steps, args.veza_rate, args.window,
                        args.loadgens, args.server_cpu,
                        metrics=lambda: {"dropped": scrape(port, "veza_stream_listeners_dropped_total")})
        finally:
            say("  worker log tail:\n" + "\n".join((tmp / f"veza-{port}.log").read_text().splitlines()[-5:]))


def bench_tracing(tmp: Path, s3: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """The listener benchmark's worker at one load with tracing off, 0, 1 and 100 %, twice (the second round in
    reverse order): CPU per listener-second, as ratios to off."""
    from veza_local.controlplane import tools_bin_dir
    from veza_local.jaeger import JaegerService

    if not (tools_bin_dir() / "jaeger").exists():
        say("tracing: skipped, jaeger is not built (hack/build-tools.sh jaeger)")
        return {"skipped": "jaeger not built"}
    settings = {"off": None, "0": "0", "0.01": "0.01", "1": "1.0"}
    runs: dict[str, list[float]] = {label: [] for label in settings}
    with JaegerService(tmp) as jaeger:
        for label in list(settings) + list(settings)[::-1]:
            ratio = settings[label]
            traced = {} if ratio is None else {
                "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": ratio}
            with running_veza(tmp, {**s3, **traced}) as (pid, port):
                say(f"tracing {label}: {args.tracing_listeners} listeners")
                r = ramp(f"veza, tracing {label}", pid, port, "/stream/bench/mp3", [args.tracing_listeners],
                         args.veza_rate, args.tracing_window, args.loadgens, args.server_cpu)
            if r["cpu_us_per_listener_s"]:
                runs[label].append(r["cpu_us_per_listener_s"])
        services = jaeger.services()

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    off = mean(runs["off"])
    return {"listeners": args.tracing_listeners, "services_in_jaeger": services, **{label: {
        "cpu_us_per_listener_s": runs[label],
        "ratio_to_off": round(m / off, 3) if (m := mean(runs[label])) and off else None} for label in settings}}


def profile_veza(tmp: Path, s3: dict[str, str], args: argparse.Namespace) -> None:
    """py-spy (through `uv tool run`) over the worker serving --profile listeners; the top frames go to stderr."""
    proc, port = start_veza(tmp, MP3_CHANNEL, s3)
    gen = None
    try:
        os.sched_setaffinity(proc.pid, {args.server_cpu})
        gen = LoadGen(port, "/stream/bench/mp3", args.loadgens,
                      (os.sched_getaffinity(0) - {args.server_cpu}) or {args.server_cpu})
        gen.add(args.profile, args.veza_rate)
        time.sleep(2)
        out = tmp / "profile.txt"
        subprocess.run(["uv", "tool", "run", "--from", "py-spy", "py-spy", "record", "--pid", str(proc.pid),
                        "--duration", str(int(args.window)), "--format", "raw", "--output", str(out), "--nonblocking"],
                       check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        totals: dict[str, int] = {}
        if out.exists():
            for line in out.read_text().splitlines():
                stack, _, count = line.rpartition(" ")
                for frame in set(stack.split(";")):
                    totals[frame] = totals.get(frame, 0) + int(count)
        samples = max(totals.values(), default=1)
        for frame, n in sorted(totals.items(), key=lambda kv: -kv[1])[:25]:
            say(f"  {100 * n / samples:5.1f}%  {frame}")
    finally:
        if gen is not None:
            gen.close()
        stop(proc)


ONSETS = 12  # tone bursts in the latency source, each at another phase of the worker's write schedule


def onset_times(first: float, n: int) -> list[float]:
    """Seconds into the source at which each 0.5 s tone begins: 1.5 s plus 1/n of the worker's write interval
    apart, so the n onsets fall at n evenly spread phases of its write schedule and one lands just after a write
    (the worst case the interval can add)."""
    return [first + k * (1.5 + WRITE_INTERVAL / n) for k in range(n)]


def tone_frames(data: bytes) -> list[bool]:
    """For each MP3 frame decoded from `data`: whether it is loud (the tone) rather than silence."""
    try:
        with av.open(io.BytesIO(data), format="mp3") as c:
            return [float(np.sqrt(np.mean(f.to_ndarray()[0] ** 2))) > 0.1 for f in c.decode(audio=0)]
    except Exception:
        return []


async def bench_latency(tmp: Path, s3: Any) -> dict[str, Any]:
    import aiohttp
    spec = {"source": {"type": "live"}, "renditions": [{"name": "mp3", "codec": "mp3", "bitrateKbps": 128}],
            "delivery": {"hls": {"enabled": True, "targetDurationSeconds": 1, "partDurationSeconds": 0.25}}}
    proc, port = start_veza(tmp, spec, {**s3, "VEZA_SOURCE_PASSWORD": "bench-source-pw"})
    rate = 48000
    onsets = onset_times(4.0, ONSETS)
    duration = onsets[-1] + 2.0
    t = np.arange(int(rate * duration)) / rate
    loud = np.zeros_like(t, dtype=bool)
    for start in onsets:
        loud |= (t >= start) & (t < start + 0.5)
    pcm = np.where(loud, 0.4 * np.sin(2 * np.pi * 1000 * t), 0.0).astype(np.float32)
    buf = Path(tmp / "lat.mp3")
    with av.open(str(buf), "w", format="mp3") as c:
        s = c.add_stream("libmp3lame", rate=rate, layout="stereo")
        s.bit_rate = 128000
        for i in range(0, len(pcm), 1152):
            f = av.AudioFrame.from_ndarray(np.stack([pcm[i:i + 1152]] * 2), format="fltp", layout="stereo")
            f.sample_rate = rate
            for p in s.encode(f):
                c.mux(p)
    data = buf.read_bytes()
    bytes_per_s = len(data) / duration  # constant bit rate: a byte offset is a time
    onset_bytes = [int(start * bytes_per_s) for start in onsets]
    tone_sent: list[float] = []  # when the source sent the chunk holding each onset's first bytes
    progressive_seen: list[float] = []  # when the listener first received each tone burst
    hls_seen: list[float] = []
    ll_seen: list[float] = []

    async def source() -> None:
        async def body():  # type: ignore[no-untyped-def]
            step = int(bytes_per_s / 20)
            start = time.monotonic()
            for i in range(0, len(data), step):
                while len(tone_sent) < len(onset_bytes) and onset_bytes[len(tone_sent)] < i + step:
                    tone_sent.append(time.monotonic())
                yield data[i:i + step]
                await asyncio.sleep(max(0, start + (i + step) / bytes_per_s - time.monotonic()))
        async with aiohttp.ClientSession() as session:
            await session.put(f"http://127.0.0.1:{port}/stream/bench/source", data=body(),
                              headers={"Content-Type": "audio/mpeg",
                                       "Authorization": "Basic c291cmNlOmJlbmNoLXNvdXJjZS1wdw=="})

    async def progressive() -> None:
        """Note when each tone burst first arrives: the first read whose bytes decode to a loud frame after
        silence (the decoder gets the previous read's tail too, to find its frame boundary)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /stream/bench/mp3 HTTP/1.0\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        tail, in_tone = b"", False
        while len(progressive_seen) < len(onsets):
            d = await reader.read(65536)
            if not d:
                break
            arrived = time.monotonic()
            frames = tone_frames(tail + d)
            if tone_sent and not in_tone and any(frames):
                progressive_seen.append(arrived)
                in_tone = True
            elif in_tone and frames and not any(frames[-8:]):
                in_tone = False  # the last ~0.2 s decoded is silence: the burst is over
            tail = d[-2048:]
        writer.close()

    async def watch_playlist(uris: Callable[[str], list[str]], found: list[float], interval: float) -> None:
        """Fetch every new segment or part the media playlist lists; note when the first tone is in one."""
        base = f"http://127.0.0.1:{port}/stream/bench/hls/mp3"
        seen: set[str] = set()
        async with aiohttp.ClientSession() as session:
            while not found:
                async with session.get(f"{base}/index.m3u8") as r:
                    text = await r.text()
                for uri in uris(text):
                    if uri in seen:
                        continue
                    seen.add(uri)
                    async with session.get(f"{base}/{uri}") as r:
                        media = await r.read()
                    if tone_sent and any(tone_frames(media)):
                        found.append(time.monotonic())
                await asyncio.sleep(interval)

    def segments(text: str) -> list[str]:
        return [u for u in text.splitlines() if u and not u.startswith("#")]

    def parts(text: str) -> list[str]:
        return re.findall(r'#EXT-X-PART:[^\n]*URI="([^"]+)"', text)

    try:
        await asyncio.sleep(1)
        await asyncio.wait_for(asyncio.gather(source(), progressive(), watch_playlist(segments, hls_seen, 0.1),
                                              watch_playlist(parts, ll_seen, 0.05)), duration + 20)
    except TimeoutError:
        say(f"latency: timed out (see {tmp}/veza-{port}.log)")
    finally:
        stop(proc)
    each = [round(seen - sent, 3) for seen, sent in zip(progressive_seen, tone_sent, strict=False)]
    return {"progressive_s": each[0] if each else None,
            "progressive_each_s": each,
            "progressive_max_s": max(each) if each else None,
            "hls_s": round(hls_seen[0] - tone_sent[0], 3) if hls_seen else None,
            "ll_hls_s": round(ll_seen[0] - tone_sent[0], 3) if ll_seen else None,
            "note": "time from the source sending a tone's first bytes to a listener receiving audible tone; "
                    f"progressive: each of {len(onsets)} tones at different phases of the write interval (the "
                    "first, each, the largest); HLS: the first tone, to the first listed segment holding it; "
                    "LL-HLS (0.25 s parts): to the first listed part (players add their own buffering)"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60, help="length of the transcoding input")
    parser.add_argument("--transcode-runs", type=int, default=5, help="interleaved runs per side; the best counts")
    parser.add_argument("--steps", default="1000,2000,3000,4000",
                        help="listener counts to ramp through (comma-separated)")
    parser.add_argument("--window", type=float, default=8, help="seconds each step is measured")
    parser.add_argument("--icecast-rate", type=float, default=100, help="new listeners per second for icecast2")
    parser.add_argument("--veza-rate", type=float, default=400, help="new listeners per second for the worker")
    parser.add_argument("--loadgens", type=int, default=4, help="load generator processes")
    parser.add_argument("--server-cpu", type=int, default=min(os.sched_getaffinity(0)),
                        help="the core the server under test is pinned to")
    parser.add_argument("--only", default="transcode,listeners,latency,tracing",
                        help="parts to run (comma-separated)")
    parser.add_argument("--tracing-listeners", type=int, default=1000, help="listeners of each tracing run")
    parser.add_argument("--tracing-window", type=float, default=5, help="seconds each tracing run is measured")
    parser.add_argument("--nice", type=int, default=0,
                        help="nice value for both servers under test and the load generators (e.g. -10 on a machine "
                             "loaded by other work, so the step ramp measures the servers, not the machine's load)")
    parser.add_argument("--profile", type=int, default=0, help="instead: py-spy the worker with this many listeners")
    args = parser.parse_args()
    args.steps = sorted(int(x) for x in args.steps.split(","))
    parts = set(args.only.split(","))
    global NICE
    NICE = args.nice
    need_tools()
    raise_fd_limit()

    result: dict[str, Any] = {"loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory(prefix="stream-bench-") as d:
        tmp = Path(d)
        wav = tmp / "input.wav"
        write_input(wav, args.seconds)
        if "transcode" in parts and not args.profile:
            say(f"1/4 transcoding {args.seconds:.0f} s of audio")
            result["transcode"] = bench_transcode(wav, args.seconds, args.transcode_runs)
        mp3 = tmp / "input.mp3"
        encode_mp3(wav, mp3)
        s3, s3env = track_bucket(tmp, mp3)
        try:
            if args.profile:
                profile_veza(tmp, s3env, args)
                return 0
            if "veza-listeners" in parts:  # one server alone (while working on it)
                result["listeners"] = {"veza": bench_veza_listeners(tmp, s3env, args)}
            if "icecast-listeners" in parts:
                result["listeners"] = {"icecast2": bench_icecast(tmp, mp3, args)}
            if "listeners" in parts:
                say(f"2/4 listeners: steps {args.steps}, {args.window:.0f} s windows, server on core {args.server_cpu}")
                veza = bench_veza_listeners(tmp, s3env, args)
                ice = bench_icecast(tmp, mp3, args)
                ratio = veza["max_listeners_all_kept_up"] / max(ice["max_listeners_all_kept_up"], 1)
                cpu_ratio = (ice["cpu_us_per_listener_s"] or 0) / max(veza["cpu_us_per_listener_s"] or 0, 1e-9)
                result["listeners"] = {
                    "veza": veza, "icecast2": ice,
                    "ratio_max_listeners_vs_icecast": round(ratio, 2),
                    "ratio_cpu_per_listener_vs_icecast": round(cpu_ratio, 2),
                    "ratio_rss_per_listener_vs_icecast": round(
                        (veza["rss_per_listener_kB"] or 0) / max(ice["rss_per_listener_kB"] or 0, 1e-9), 2),
                    # The worker's goals per listener: <= 40 µs of CPU per listener-second, <= 4 kB of memory.
                    "veza_cpu_goal_met": (veza["cpu_us_per_listener_s"] or 1e9) <= 40,
                    "veza_rss_goal_met": (veza["rss_per_listener_kB"] or 1e9) <= 4,
                    "est_listeners_per_core_veza": int(1e6 / max(veza["cpu_us_per_listener_s"] or 0, 1e-9)),
                    "est_listeners_per_core_icecast2": int(1e6 / max(ice["cpu_us_per_listener_s"] or 0, 1e-9))}
            if "latency" in parts:
                say("3/4 latency")
                result["latency"] = asyncio.run(bench_latency(tmp, s3env))
                say(f"  {result['latency']}")
            if "tracing" in parts:
                say("4/4 the cost of tracing")
                result["tracing"] = bench_tracing(tmp, s3env, args)
                say(f"  {result['tracing']}")
        finally:
            s3.stop()
    result["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
