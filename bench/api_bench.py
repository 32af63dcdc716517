"""API benchmark: logins/s, token verifications/s, authenticated GET p99 vs the same GET without auth.

    .venv/bin/python bench/api_bench.py [--seconds 8] [--concurrency 32]

Starts PostgreSQL, Redis and S3 on loopback, `veza api` as its own process (so
the load generator does not share its event loop), then measures:

- logins/s with the production argon2id cost (19 MiB, 2 passes, 1 lane: OWASP's
  minimum; ~tens of ms per hash, so one core serves a few dozen logins/s, which
  is the point: an offline guesser pays the same per guess);
- token verifications/s of `veza_core.auth.TokenVerifier` (EdDSA), in process: a token seen for the first
  time (the signature check; the verifier's cache off) and the same token again (the verified-token cache);
- GET /api/v1/rooms p50/p99 under concurrent load with a bearer token (verify,
  revocation check in Redis, per-user rate limit) and without one, and the same
  queries behind a minimal aiohttp + asyncpg handler without auth
  (bench/rooms_baseline.py, its own process), alternated in the same run (`--rounds` times: the machine's
  speed drifts, so every phase gets its share of each moment); the
  ratios are the cost of authentication and of everything the real API adds; with the CPU time the
  serving process spent per request in each phase (steadier than req/s when the machine is shared).
  Both serve on the loop the API serves on (`VEZA_EVENT_LOOP`, uvloop unless set; `asyncio` compares the
  standard loop). The baseline encodes as a minimal aiohttp handler does (aiohttp's `json_response`); a second baseline
  (`baseline_orjson`) encodes as the API does, and the ratios to it are what the API costs beyond its query and
  its encoding.

Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from loadgen import TICK, cpu_seconds
from veza_core.auth import AUDIENCE_API, TokenIssuer, TokenVerifier
from veza_core.db import migrate
from veza_core.eventloop import event_loop_kind
from veza_core.keys import KeySet, generate_signing_key, secret_data
from veza_local.services import PostgresService, RedisService, S3Service, free_port

PASSWORD = "correct horse battery staple"


def log(message: str) -> None:
    print(f"[api_bench] {message}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def wait_ready(base: str, deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < end:
            try:
                async with session.get(f"{base}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("veza api did not become ready")


async def logins(base: str, emails: list[str], seconds: float, concurrency: int) -> dict[str, float]:
    done: list[float] = []
    end = time.monotonic() + seconds

    async def worker(i: int, session: aiohttp.ClientSession) -> None:
        while time.monotonic() < end:
            started = time.perf_counter()
            async with session.post(f"{base}/api/v1/auth/login",
                                    json={"email": emails[i % len(emails)], "password": PASSWORD}) as resp:
                await resp.read()
                assert resp.status == 200, resp.status
            done.append(time.perf_counter() - started)

    began = time.monotonic()
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*[worker(i, session) for i in range(concurrency)])
    elapsed = time.monotonic() - began
    return {"logins_per_s": round(len(done) / elapsed, 1), "login_p50_ms": round(pct(done, 0.5) * 1000, 1),
            "login_p99_ms": round(pct(done, 0.99) * 1000, 1)}


async def get_load(base: str, token: str | None, seconds: float, concurrency: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    end = time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < end:
            started = time.perf_counter()
            async with session.get(f"{base}/api/v1/rooms", headers=headers) as resp:
                await resp.read()
                assert resp.status == 200, resp.status
            latencies.append(time.perf_counter() - started)

    began = time.monotonic()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*[worker(session) for _ in range(concurrency)])
    return latencies, time.monotonic() - began


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a server and its children (PostgreSQL's backends, which leave its process group): the live
    ones' own, and the reaped ones' as their parent counts them."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited while we looked
            continue
        if stat.parent.name == str(pid) or int(fields[1]) == pid:
            total += sum(int(f) for f in fields[11:15])
    return total / TICK


def own_cpu_seconds() -> float:
    """The load generator's CPU (this process): on a machine of two cores it competes with the servers."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def start_baseline(started: list[subprocess.Popen[bytes]], database_url: str, redis_url: str,
                         *options: str) -> str:
    """bench/rooms_baseline.py as its own process on a free port (added to `started`); its base URL once it
    answers."""
    port = free_port()
    started.append(subprocess.Popen([sys.executable, str(Path(__file__).with_name("rooms_baseline.py")), str(port),
                                     database_url, redis_url, "local", *options], stdout=subprocess.DEVNULL))
    base = f"http://127.0.0.1:{port}"
    await wait_ready(base)
    return base


def verifications(keys: KeySet, seconds: float, *, cache_size: int) -> float:
    token = TokenIssuer(keys, issuer="https://bench.veza").issue("u1", audience=AUDIENCE_API, roles=["admin"],
                                                                 sid="s1")
    verifier = TokenVerifier(keys, issuer="https://bench.veza", audience=AUDIENCE_API, cache_size=cache_size)
    count, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(200):
            verifier.verify(token)
        count += 200
    return count / seconds


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="veza-api-bench-") as tmp:
        base_dir = Path(tmp)
        services = [PostgresService(base_dir / "pg"), RedisService(base_dir / "redis"), S3Service(base_dir / "s3")]
        for service in services:
            log(f"starting {service.name}")
            service.start()
        postgres, redis, s3 = services
        api: subprocess.Popen[bytes] | None = None
        baselines: list[subprocess.Popen[bytes]] = []
        try:
            assert isinstance(postgres, PostgresService) and isinstance(s3, S3Service)
            await migrate(postgres.url)
            keys_dir = base_dir / "keys"
            keys_dir.mkdir()
            signing = [generate_signing_key()]
            for name, text in secret_data(signing).items():
                (keys_dir / name).write_text(text)
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            env = {**os.environ, "VEZA_DATABASE_URL": postgres.url, "VEZA_REDIS_URL": redis.url,
                   "VEZA_S3_ENDPOINT": s3.url, "AWS_ACCESS_KEY_ID": s3.access_key,
                   "AWS_SECRET_ACCESS_KEY": s3.secret_key, "VEZA_JWT_KEYS_DIR": str(keys_dir),
                   "VEZA_JWT_ISSUER": "https://bench.veza", "VEZA_HTTP_HOST": "127.0.0.1", "VEZA_HTTP_PORT": str(port),
                   "VEZA_BOOTSTRAP_ADMIN_EMAIL": "root@bench.veza", "VEZA_LOG_LEVEL": "WARNING",
                   # Measure the work, not the limits.
                   "VEZA_RATE_LOGIN_PER_MINUTE": "1000000", "VEZA_RATE_LOGIN_BURST": "1000000",
                   "VEZA_RATE_IP_PER_SECOND": "1000000", "VEZA_RATE_IP_BURST": "1000000",
                   "VEZA_RATE_USER_PER_SECOND": "1000000", "VEZA_RATE_USER_BURST": "1000000"}
            log("starting veza api")
            # --profile: the API under cProfile (slower: compare its figures with each other only).
            profiling = ["-m", "cProfile", "-o", args.profile] if args.profile else []
            api = subprocess.Popen([sys.executable, *profiling, "-m", "veza_cli.main", "api"], env=env,
                                   stdout=subprocess.DEVNULL)
            await wait_ready(base)

            async with aiohttp.ClientSession() as session:
                emails = [f"user{i}@bench.veza" for i in range(8)]
                for email in ["root@bench.veza", *emails]:
                    async with session.post(f"{base}/api/v1/auth/register",
                                            json={"email": email, "password": PASSWORD, "display_name": "B"}) as r:
                        assert r.status == 202, await r.text()
                # Registration leaves addresses unverified, and an unverified address is never made admin:
                # the bench, owning the database, verifies them all (a user would follow the mailed link).
                owner = await asyncpg.connect(postgres.url)
                try:
                    await owner.execute("UPDATE users SET email_verified_at = now(),"
                                        " roles = CASE WHEN email = 'root@bench.veza' THEN '{admin}' ELSE roles END")
                finally:
                    await owner.close()
                async with session.post(f"{base}/api/v1/auth/login",
                                        json={"email": "root@bench.veza", "password": PASSWORD}) as r:
                    admin = (await r.json())["access_token"]
                for i in range(20):
                    async with session.put(f"{base}/api/v1/admin/rooms/room-{i}", json={"title": f"Room {i}"},
                                           headers={"Authorization": f"Bearer {admin}"}) as r:
                        assert r.status == 201
                async with session.post(f"{base}/api/v1/auth/login",
                                        json={"email": emails[0], "password": PASSWORD}) as r:
                    user_token = (await r.json())["access_token"]

            log(f"logins for {args.seconds} s (argon2id m=19 MiB t=2 p=1)")
            login_figures = await logins(base, emails, args.seconds, concurrency=4)
            log(f"  {login_figures}")

            log("token verifications (in process): signature checks, then the same token from the cache")
            verify_rate = verifications(KeySet.from_private_keys(signing), 2.0, cache_size=0)
            cached_rate = verifications(KeySet.from_private_keys(signing), 2.0, cache_size=4096)
            log(f"  {verify_rate:.0f}/s checked, {cached_rate:.0f}/s cached")

            baseline_base = await start_baseline(baselines, postgres.url, redis.url)
            orjson_base = await start_baseline(baselines, postgres.url, redis.url, "orjson")
            baseline, orjson_baseline = baselines

            log(f"GET /api/v1/rooms, {args.concurrency} concurrent, baselines, no auth and auth alternated")
            for url in (base, baseline_base, orjson_base):  # warm-up
                await get_load(url, None, 1.0, args.concurrency)
            runs = (("baseline", baseline_base, None, baseline),
                    ("baseline_orjson", orjson_base, None, orjson_baseline),
                    ("anon", base, None, api), ("auth", base, user_token, api))
            phases: dict[str, list[float]] = {name: [] for name, *_ in runs}
            elapsed: dict[str, float] = dict.fromkeys(phases, 0.0)
            cpu: dict[str, float] = dict.fromkeys(phases, 0.0)
            # Everything else the machine spent on each phase: PostgreSQL, Redis and the load generator.
            assert postgres.process is not None and redis.process is not None
            meters = {"postgres": lambda: tree_cpu_seconds(postgres.process.pid),  # type: ignore[union-attr]
                      "redis": lambda: tree_cpu_seconds(redis.process.pid),  # type: ignore[union-attr]
                      "client": own_cpu_seconds}
            others: dict[str, dict[str, float]] = {name: dict.fromkeys(meters, 0.0) for name in cpu}
            for _ in range(args.rounds):
                for name, url, token, server in runs:
                    assert server is not None
                    used = cpu_seconds(server.pid)
                    before = {meter: read() for meter, read in meters.items()}
                    lat, took = await get_load(url, token, args.seconds / args.rounds, args.concurrency)
                    spent = cpu_seconds(server.pid) - used
                    for meter, read in meters.items():
                        others[name][meter] += read() - before[meter]
                    cpu[name] += spent
                    phases[name] += lat
                    elapsed[name] += took
                    log(f"  {name}: {len(lat) / took:.0f} req/s, p99 {pct(lat, 0.99) * 1000:.1f} ms, "
                        f"{spent / len(lat) * 1e6:.0f} µs of server CPU per request")
        finally:
            for process in baselines:
                process.terminate()
                process.wait(timeout=15)
            if api is not None:
                api.terminate()
                try:
                    api.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    api.kill()
            for service in reversed(services):
                service.stop()

    auth, anon, bare, bare_orjson = phases["auth"], phases["anon"], phases["baseline"], phases["baseline_orjson"]
    rps = {name: len(phases[name]) / elapsed[name] for name in phases}
    return {
        "bench": "api", "event_loop": event_loop_kind(),
        "argon2": {"type": "argon2id", "memory_kib": 19456, "time_cost": 2, "parallelism": 1,
                   "why": "OWASP minimum for argon2id; each guess costs an attacker 19 MiB and ~tens of ms"},
        **login_figures,
        "token_verifications_per_s": round(verify_rate),
        "token_verifications_cached_per_s": round(cached_rate),
        "get_concurrency": args.concurrency,
        "get_auth_rps": round(len(auth) / elapsed["auth"]),
        "get_anon_rps": round(len(anon) / elapsed["anon"]),
        "get_auth_p50_ms": round(statistics.median(auth) * 1000, 2),
        "get_anon_p50_ms": round(statistics.median(anon) * 1000, 2),
        "get_auth_p99_ms": round(pct(auth, 0.99) * 1000, 2),
        "get_anon_p99_ms": round(pct(anon, 0.99) * 1000, 2),
        "get_baseline_rps": round(rps["baseline"]),
        "get_baseline_p99_ms": round(pct(bare, 0.99) * 1000, 2),
        "get_baseline_orjson_rps": round(rps["baseline_orjson"]),
        "get_baseline_orjson_p99_ms": round(pct(bare_orjson, 0.99) * 1000, 2),
        # The serving process's CPU per request (the API's or the baseline's; PostgreSQL and Redis not counted).
        "get_auth_cpu_us": round(cpu["auth"] / len(auth) * 1e6),
        "get_anon_cpu_us": round(cpu["anon"] / len(anon) * 1e6),
        "get_baseline_cpu_us": round(cpu["baseline"] / len(bare) * 1e6),
        "get_baseline_orjson_cpu_us": round(cpu["baseline_orjson"] / len(bare_orjson) * 1e6),
        # And what PostgreSQL, Redis and the load generator spent per request in each phase (µs).
        "get_other_cpu_us": {name: {meter: round(spent / len(phases[name]) * 1e6) for meter, spent in used.items()}
                             for name, used in others.items()},
        "auth_rps_ratio_to_baseline": round(rps["auth"] / rps["baseline"], 2),
        "anon_rps_ratio_to_baseline": round(rps["anon"] / rps["baseline"], 2),
        # Against the baseline that encodes as the API does: what the API costs beyond its query and encoding.
        "auth_rps_ratio_to_orjson_baseline": round(rps["auth"] / rps["baseline_orjson"], 2),
        "anon_rps_ratio_to_orjson_baseline": round(rps["anon"] / rps["baseline_orjson"], 2),
        "auth_p99_ratio": round(pct(auth, 0.99) / pct(anon, 0.99), 2),
        "auth_p50_ratio": round(statistics.median(auth) / statistics.median(anon), 2),
        # These machines are shared: a high load average means noisy absolute figures.
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each measured phase")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent GET requests")
    parser.add_argument("--rounds", type=int, default=8, help="times the GET phases alternate (each gets "
                                                              "seconds/rounds a round)")
    parser.add_argument("--profile", metavar="FILE", help="run the API under cProfile and write its profile to FILE "
                                                          "(read it with `python -m pstats FILE`)")
    figures = asyncio.run(main(parser.parse_args()))
    print(json.dumps(figures))
