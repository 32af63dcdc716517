"""Stream worker benchmark, with Debian's ffmpeg and icecast2 as baselines measured in the same run.

    .venv/bin/python bench/stream_bench.py [--seconds 60] [--listeners 1000] [--hold 15]

1. transcode speed (x realtime, one thread) of each rendition: the worker's pipeline vs `ffmpeg -threads 1`;
2. listeners of a 128 kbps MP3 stream: one `veza stream` process vs icecast2 serving the same file, both on the
   same machine; reports server CPU and memory per listener and the capacity ratio derived from CPU per listener;
3. source-to-listener latency of a live source, progressive and HLS.
Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "workloads"), str(ROOT)]

from veza_local.services import free_port  # noqa: E402
from veza_stream.sources import decode  # noqa: E402
from veza_stream.spec import Rendition  # noqa: E402
from veza_stream.transcoder import Transcoder  # noqa: E402

FFMPEG_CODECS = {"mp3": ["-c:a", "libmp3lame"], "aac": ["-c:a", "aac"], "opus": ["-c:a", "libopus"]}
FFMPEG_FORMATS = {"mp3": "mp3", "aac": "adts", "opus": "ogg"}


def raise_fd_limit() -> None:
    """Soft fd limit up to the hard one (10k+ listeners need it; raise the hard limit with ulimit -Hn)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


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


def bench_transcode(wav: Path, seconds: float) -> dict[str, Any]:
    data = wav.read_bytes()
    out: dict[str, Any] = {}
    for codec, kbps in (("mp3", 128), ("aac", 128), ("opus", 96)):
        rendition = Rendition(name=codec, codec=codec, bitrateKbps=kbps)
        started = time.process_time()
        transcoder = Transcoder([rendition])
        for frame, _ in decode(data):
            transcoder.encode(frame)
        ours = seconds / (time.process_time() - started)
        cmd = ["ffmpeg", "-nostdin", "-v", "error", "-threads", "1", "-i", str(wav), "-ar", "48000",
               *FFMPEG_CODECS[codec], "-b:a", f"{kbps}k", "-f", FFMPEG_FORMATS[codec], "-y", "/dev/null"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(cmd, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        theirs = seconds / ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
        out[codec] = {"veza_x_realtime": round(ours, 1), "ffmpeg_x_realtime": round(theirs, 1),
                      "ratio": round(ours / theirs, 2)}
        say(f"transcode {codec}: veza {ours:.0f}x, ffmpeg {theirs:.0f}x realtime")
    return out


# -- listeners -------------------------------------------------------------------------------------------------
LOADGEN = r"""
import asyncio, sys, time, resource
host, port, path, n, hold = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
class P(asyncio.Protocol):
    def __init__(s): s.n = 0; s.first = None
    def connection_made(s, t): t.write(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    def data_received(s, d):
        s.n += len(d)
        if s.first is None: s.first = time.monotonic()
    def connection_lost(s, e): s.lost = True
async def main():
    loop = asyncio.get_running_loop(); ps = []
    for i in range(n):
        for _ in range(20):
            try:
                _, p = await loop.create_connection(P, host, port); ps.append(p); break
            except OSError:
                await asyncio.sleep(0.05)
        if i % 50 == 49: await asyncio.sleep(0.02)
    print("connected", flush=True)
    await asyncio.sleep(2)
    base = [p.n for p in ps]; t0 = time.monotonic()
    await asyncio.sleep(hold)
    dt = time.monotonic() - t0
    rates = sorted((p.n - b) / dt for p, b in zip(ps, base))
    print(len(ps), rates[0] if rates else 0, rates[len(rates)//2] if rates else 0, flush=True)
h = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; resource.setrlimit(resource.RLIMIT_NOFILE, (h, h))
asyncio.run(main())
"""


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of a process."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return (int(stat[11]) + int(stat[12])) / ticks, rss


def run_listeners(port: int, path: str, pid: int, total: int, hold: float, procs: int = 2) -> dict[str, Any]:
    _, rss0 = proc_stats(pid)
    gens = [subprocess.Popen([sys.executable, "-c", LOADGEN, "127.0.0.1", str(port), path, str(total // procs),
                              str(hold)], stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    for g in gens:
        assert g.stdout is not None
        g.stdout.readline()  # connected
    cpu1, rss1 = proc_stats(pid)
    time.sleep(hold / 2)
    cpu_mid, _ = proc_stats(pid)
    results = []
    for g in gens:
        assert g.stdout is not None
        results.append(g.stdout.readline().split())
        g.wait(30)
    connected = sum(int(r[0]) for r in results)
    slowest = min(float(r[1]) for r in results)
    cpu_per_s = (cpu_mid - cpu1) / (hold / 2)
    return {"listeners": connected, "slowest_kbps": round(slowest * 8 / 1000, 1),
            "all_kept_up": slowest * 8 / 1000 >= 120, "server_cpu_per_s": round(cpu_per_s, 3),
            "rss_per_listener_kB": round((rss1 - rss0) / max(connected, 1) / 1024, 2),
            "cpu_us_per_listener_s": round(cpu_per_s / max(connected, 1) * 1e6, 2)}


def wait_port(port: int, timeout: float = 20) -> None:
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open")


def bench_icecast(tmp: Path, mp3: Path, listeners: int, hold: float) -> dict[str, Any]:
    port = free_port()
    (tmp / "ice").mkdir()
    conf = tmp / "icecast.xml"
    # icecast2 refuses to run as root: drop to nobody then (its log directory must be writable).
    owner = "<changeowner><user>nobody</user><group>nogroup</group></changeowner>" if os.getuid() == 0 else ""
    os.chmod(tmp / "ice", 0o777)  # noqa: S103 (a temporary log dir for the benchmark)
    conf.write_text(f"""<icecast><limits><clients>{listeners + 100}</clients><sources>2</sources>
<burst-size>65536</burst-size></limits>
<authentication><source-password>benchpw</source-password><admin-password>benchpw</admin-password></authentication>
<listen-socket><port>{port}</port><bind-address>127.0.0.1</bind-address></listen-socket>
<paths><logdir>{tmp}/ice</logdir><webroot>/usr/share/icecast2/web</webroot></paths>
<logging><loglevel>1</loglevel></logging><security><chroot>0</chroot>{owner}</security></icecast>""")
    ice = subprocess.Popen(["icecast2", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           preexec_fn=raise_fd_limit)
    src = None
    try:
        wait_port(port)
        src = subprocess.Popen(["ffmpeg", "-nostdin", "-v", "error", "-re", "-stream_loop", "-1", "-i", str(mp3),
                                "-c", "copy", "-content_type", "audio/mpeg", "-f", "mp3",
                                f"icecast://source:benchpw@127.0.0.1:{port}/bench.mp3"])
        time.sleep(2)
        say(f"icecast2: {listeners} listeners for {hold:.0f} s")
        return run_listeners(port, "/bench.mp3", ice.pid, listeners, hold)
    finally:
        for p in (src, ice):
            if p is not None:
                p.terminate()
                p.wait(10)


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


def bench_veza_listeners(tmp: Path, s3: Any, listeners: int, hold: float) -> dict[str, Any]:
    spec = {"source": {"type": "playlist", "playlist": {"tracks": ["bench/input.mp3"]}},
            "renditions": [{"name": "mp3", "codec": "mp3", "bitrateKbps": 128}],
            "delivery": {"hls": {"enabled": False}}}
    proc, port = start_veza(tmp, spec, s3)
    try:
        time.sleep(2)
        say(f"veza stream: {listeners} listeners for {hold:.0f} s")
        # One worker process on one core: pin it.
        os.sched_setaffinity(proc.pid, {0})
        return run_listeners(port, "/stream/bench/mp3", proc.pid, listeners, hold)
    finally:
        stop(proc)


async def bench_latency(tmp: Path, s3: Any) -> dict[str, Any]:
    import aiohttp
    spec = {"source": {"type": "live"}, "renditions": [{"name": "mp3", "codec": "mp3", "bitrateKbps": 128}],
            "delivery": {"hls": {"enabled": True, "targetDurationSeconds": 1}}}
    proc, port = start_veza(tmp, spec, {**s3, "VEZA_SOURCE_PASSWORD": "pw"})
    rate = 48000
    silence = np.zeros(rate * 4, dtype=np.float32)
    tone = (0.4 * np.sin(2 * np.pi * 1000 * np.arange(rate * 4) / rate)).astype(np.float32)
    pcm = np.concatenate([silence, tone])
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
    bytes_per_s = len(data) / 8.0
    tone_sent: list[float] = []
    progressive_seen: list[float] = []
    hls_seen: list[float] = []

    async def source() -> None:
        async def body():  # type: ignore[no-untyped-def]
            step = int(bytes_per_s / 20)
            start = time.monotonic()
            for i in range(0, len(data), step):
                if i >= len(data) / 2 and not tone_sent:
                    tone_sent.append(time.monotonic())
                yield data[i:i + step]
                await asyncio.sleep(max(0, start + (i + step) / bytes_per_s - time.monotonic()))
        async with aiohttp.ClientSession() as session:
            await session.put(f"http://127.0.0.1:{port}/stream/bench/source", data=body(),
                              headers={"Content-Type": "audio/mpeg", "Authorization": "Basic c291cmNlOnB3"})

    def loud(chunk: bytes) -> bool:
        try:
            with av.open(__import__("io").BytesIO(chunk), format="mp3") as c:
                x = np.concatenate([f.to_ndarray()[0] for f in c.decode(audio=0)] or [np.zeros(1)])
            return float(np.sqrt(np.mean(x ** 2))) > 0.1
        except Exception:
            return False

    async def progressive() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /stream/bench/mp3 HTTP/1.0\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        window = b""
        while not progressive_seen:
            d = await reader.read(4096)
            if not d:
                break
            window = (window + d)[-8192:]
            if tone_sent and loud(window[-4096:]):
                progressive_seen.append(time.monotonic())
        writer.close()

    async def hls() -> None:
        seen: set[str] = set()
        async with aiohttp.ClientSession() as session:
            while not hls_seen:
                async with session.get(f"http://127.0.0.1:{port}/stream/bench/hls/mp3/index.m3u8") as r:
                    text = await r.text()
                for uri in [u for u in text.splitlines() if u and not u.startswith("#")]:
                    if uri in seen:
                        continue
                    seen.add(uri)
                    async with session.get(f"http://127.0.0.1:{port}/stream/bench/hls/mp3/{uri}") as r:
                        seg = await r.read()
                    if tone_sent and loud(seg):
                        hls_seen.append(time.monotonic())
                await asyncio.sleep(0.1)

    try:
        await asyncio.sleep(1)
        await asyncio.wait_for(asyncio.gather(source(), progressive(), hls()), 30)
    except TimeoutError:
        say(f"latency: timed out (see {tmp}/veza-{port}.log)")
    finally:
        stop(proc)
    return {"progressive_s": round(progressive_seen[0] - tone_sent[0], 3) if progressive_seen else None,
            "hls_s": round(hls_seen[0] - tone_sent[0], 3) if hls_seen else None,
            "note": "time from the source sending the first tone bytes to a listener receiving audible tone; "
                    "HLS: to the first listed segment holding it (players add their own buffering)"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60, help="length of the transcoding input")
    parser.add_argument("--listeners", type=int, default=1000)
    parser.add_argument("--hold", type=float, default=12, help="seconds the listeners stay connected")
    args = parser.parse_args()
    need_tools()
    raise_fd_limit()
    from veza_local.services import S3Service

    with tempfile.TemporaryDirectory(prefix="stream-bench-") as d:
        tmp = Path(d)
        wav = tmp / "input.wav"
        write_input(wav, args.seconds)
        say(f"1/3 transcoding {args.seconds:.0f} s of audio")
        transcode = bench_transcode(wav, args.seconds)
        mp3 = tmp / "input.mp3"
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(wav), "-c:a", "libmp3lame", "-b:a", "128k",
                        "-ar", "48000", "-y", str(mp3)], check=True)
        s3 = S3Service(tmp / "s3").start()
        try:
            import boto3
            client = boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1",
                                  aws_access_key_id=s3.access_key, aws_secret_access_key=s3.secret_key)
            client.create_bucket(Bucket="veza")
            client.put_object(Bucket="veza", Key="bench/input.mp3", Body=mp3.read_bytes())
            s3env = {"VEZA_S3_ENDPOINT": s3.url, "VEZA_S3_BUCKET": "veza", "AWS_ACCESS_KEY_ID": s3.access_key,
                     "AWS_SECRET_ACCESS_KEY": s3.secret_key}
            say(f"2/3 listeners ({args.listeners})")
            veza = bench_veza_listeners(tmp, s3env, args.listeners, args.hold)
            say(f"  veza: {veza}")
            ice = bench_icecast(tmp, mp3, args.listeners, args.hold)
            say(f"  icecast2: {ice}")
            say("3/3 latency")
            latency = asyncio.run(bench_latency(tmp, s3env))
            say(f"  {latency}")
        finally:
            s3.stop()
    capacity_ratio = ice["cpu_us_per_listener_s"] / max(veza["cpu_us_per_listener_s"], 1e-9)
    result = {"transcode": transcode,
              "listeners": {"veza": veza, "icecast2": ice,
                            "capacity_ratio_vs_icecast_by_cpu": round(capacity_ratio, 2),
                            "est_listeners_per_core_veza": int(1e6 / max(veza["cpu_us_per_listener_s"], 1e-9)),
                            "est_listeners_per_core_icecast2": int(1e6 / max(ice["cpu_us_per_listener_s"], 1e-9))},
              "latency": latency}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
