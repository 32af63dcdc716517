"""`veza up`: the whole platform on this machine, from the same CR YAML files a cluster gets.

Reads and validates the VezaPlatform / ChatRoom / StreamChannel files (as the API
server would), starts PostgreSQL, NATS (JetStream), Redis (when installed) and an
S3 endpoint, runs the migrations, then runs the API, one chat worker per
ChatRoom and one stream worker per StreamChannel with the environment the
operator gives their pods (`veza_operator.wiring.worker_env`), behind one HTTP
entry point with the Ingress's routes. Ctrl-C stops everything. See docs/local.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from aiohttp import web

from . import crfiles
from .services import LocalService, ServiceError

LOCAL_SECRET = "veza-local-connections"  # noqa: S105 - a Secret name
NAMESPACE = "default"
DEV_EMAIL = "dev@veza.local"
DEV_PASSWORD = "veza-dev-password"  # noqa: S105 - the documented local dev login
DEV_NAME = "Dev"
# Every browser on this machine reaches the API from 127.0.0.1, so the per-IP login bucket is shared by all
# of them; locally it is widened (docs/local.md).
LOCAL_LOGIN_BURST = "50"
STOP_TIMEOUT = 15.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--filename", action="append", type=Path, metavar="PATH",
                        help="CR YAML file or directory (repeatable; default: examples/)")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("VEZA_DATA_DIR", ".veza")),
                        help="where PostgreSQL, NATS, keys and logs live across runs (default: .veza)")
    parser.add_argument("--reset", action="store_true", help="wipe --data-dir first (all local data)")
    parser.add_argument("--host", default="127.0.0.1", help="entry point address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="entry point port (default: 8000)")
    parser.add_argument("--platform", help="the VezaPlatform to run when the files hold several")
    parser.add_argument("--no-redis", action="store_true",
                        help="run without Redis (the workers' in-process fallbacks), even if it is installed")
    parser.add_argument("--check", action="store_true", help="validate the files and exit")


class UpError(Exception):
    """A problem `veza up` reports in one clear sentence and exits 1 (or 2 for bad input)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class Console:
    """Progress lines on stderr: `  name  address  state`."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.t0 = time.monotonic()
        color = stream.isatty() and os.environ.get("NO_COLOR") is None
        self.bold = (lambda s: f"\033[1m{s}\033[0m") if color else (lambda s: s)

    def elapsed(self) -> str:
        return f"{time.monotonic() - self.t0:5.1f}s"

    def line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def step(self, name: str, where: str, state: str) -> None:
        self.line(f"[{self.elapsed()}] {name:<18} {where:<24} {state}")

    def notice(self, text: str) -> None:
        self.line(f"[{self.elapsed()}] {self.bold('notice:')} {text}")


@dataclass
class Plan:
    """What runs: the platform, its rooms and channels, as validated resources."""

    platform: crfiles.Resource
    rooms: list[crfiles.Resource]
    channels: list[crfiles.Resource]
    secrets: dict[str, dict[str, str]]
    warnings: list[str] = field(default_factory=list)


def plan(paths: list[Path], platform: str | None) -> Plan:
    try:
        crs = crfiles.load(paths)
    except crfiles.CRError as exc:
        raise UpError(str(exc), 2) from None
    if not crs.platforms:
        raise UpError("no VezaPlatform in " + ", ".join(str(p) for p in paths), 2)
    if platform is None and len(crs.platforms) > 1:
        raise UpError("several VezaPlatforms (" + ", ".join(p.name for p in crs.platforms)
                      + "): choose one with --platform", 2)
    chosen = next((p for p in crs.platforms if platform in (None, p.name)), None)
    if chosen is None:
        raise UpError(f"no VezaPlatform named {platform!r}", 2)
    warnings = list(crs.warnings)
    rooms: list[crfiles.Resource] = []
    channels: list[crfiles.Resource] = []
    for res in crs.rooms + crs.channels:
        ref = res.spec["platformRef"]["name"]
        if ref != chosen.name:
            warnings.append(f'{res.kind} "{res.name}": skipped, its platformRef is {ref!r} '
                            f"(PlatformNotFound in this run)")
            continue
        (rooms if res.kind == "ChatRoom" else channels).append(res)
    names = {c.name for c in channels}
    for room in rooms:
        ref = (room.spec.get("channelRef") or {}).get("name")
        if ref and ref not in names:
            warnings.append(f'ChatRoom "{room.name}": channelRef {ref!r} is not among the StreamChannels')
    return Plan(chosen, rooms, channels, crs.secrets, warnings)


# -- data directory ------------------------------------------------------------------------------


def lock_data_dir(data_dir: Path) -> Any:
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / ".lock", "a+")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip() or "?"
        handle.close()
        raise UpError(f"{data_dir} is in use by another veza up (pid {pid}); stop it or use another --data-dir"
                      ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def reset_data_dir(data_dir: Path) -> None:
    for child in data_dir.iterdir():
        if child.name == ".lock":
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def ensure_keys(keys_dir: Path) -> None:
    """JWT signing keys made once and kept (as the operator's <platform>-jwt-keys Secret)."""
    from veza_core import keys

    if (keys_dir / keys.SIGNING_KEYS_FILE).exists() and (keys_dir / keys.PUBLIC_KEYS_FILE).exists():
        return
    keys_dir.mkdir(parents=True, exist_ok=True)
    keys_dir.chmod(0o700)
    for name, text in keys.secret_data([keys.generate_signing_key()]).items():
        path = keys_dir / name
        path.write_text(text)
        path.chmod(0o600)


# -- wiring --------------------------------------------------------------------------------------


@dataclass
class Services:
    postgres: Any
    nats: Any
    s3: Any
    redis: Any | None

    def all(self) -> list[LocalService]:
        return [s for s in (self.postgres, self.nats, self.redis, self.s3) if s is not None]


def local_platform_spec(p: Plan, services: Services) -> tuple[Any, dict[str, dict[str, str]]]:
    """The platform spec with `connections` pointing at the local services, and the Secrets to resolve it."""
    from veza_operator.models import (
        Connections,
        LocalObjectRef,
        NatsConnection,
        PostgresConnection,
        RedisConnection,
        S3Connection,
        SecretKeyRef,
        VezaPlatformSpec,
    )

    spec = VezaPlatformSpec.model_validate(p.platform.spec)
    s3 = spec.connections.s3
    connections = Connections(
        postgres=PostgresConnection(uriSecretRef=SecretKeyRef(name=LOCAL_SECRET, key="postgres-uri")),
        redis=RedisConnection(url=services.redis.url) if services.redis is not None else RedisConnection(),
        nats=NatsConnection(url=services.nats.url),
        s3=S3Connection(bucket=s3.bucket, region=s3.region, endpoint=services.s3.url,
                        credentialsSecretRef=LocalObjectRef(name=LOCAL_SECRET)),
    )
    secrets = dict(p.secrets)
    secrets[LOCAL_SECRET] = {"postgres-uri": services.postgres.url, "AWS_ACCESS_KEY_ID": services.s3.access_key,
                             "AWS_SECRET_ACCESS_KEY": services.s3.secret_key}
    return spec.model_copy(update={"connections": connections}), secrets


def worker_environment(p: Plan, spec: Any, secrets: dict[str, dict[str, str]], component: str,
                       resource: crfiles.Resource | None, *, host: str, port: int, public_url: str,
                       keys_dir: Path) -> dict[str, str]:
    """The operator's wiring for this worker, then the few values that must differ on one machine."""
    from veza_operator import wiring

    env = wiring.worker_env(p.platform.name, NAMESPACE, spec, component,
                            resource.name if resource else None, resource.spec if resource else None)
    resolved = wiring.resolve_env(env, secrets)
    resolved.update({
        "VEZA_HTTP_HOST": host,
        "VEZA_HTTP_PORT": str(port),
        "VEZA_PUBLIC_URL": public_url,
        "VEZA_JWT_ISSUER": public_url,
        "VEZA_JWT_KEYS_DIR": str(keys_dir),
    })
    if component == "api":
        resolved["VEZA_BOOTSTRAP_ADMIN_EMAIL"] = DEV_EMAIL
        resolved["VEZA_RATE_LOGIN_BURST"] = LOCAL_LOGIN_BURST
    return resolved


# -- the run -------------------------------------------------------------------------------------


class Up:
    def __init__(self, args: argparse.Namespace, console: Console) -> None:
        self.args = args
        self.console = console
        self.data_dir: Path = args.data_dir.resolve()
        self.services: list[LocalService] = []
        self.starting: list[asyncio.Future[Any]] = []
        self.workers: list[Any] = []
        self.runner: web.AppRunner | None = None
        self.stopping = False
        self.public_url = ""

    # -- steps ------------------------------------------------------------------------------------
    async def start_service(self, service: LocalService, label: str) -> LocalService:
        t = time.monotonic()
        self.services.append(service)
        fut = asyncio.ensure_future(asyncio.to_thread(service.start))
        self.starting.append(fut)
        await asyncio.shield(fut)
        self.console.step(label, f"{service.host}:{service.port}", f"ready ({time.monotonic() - t:.1f} s)")
        return service

    async def start_entrypoint(self, routes: Any, bindings: dict[str, Any]) -> None:
        from . import entrypoint

        def extra(app: web.Application) -> None:
            try:
                import veza_web
            except ImportError:
                return
            veza_web.add_routes(app, config=lambda: bindings)

        app = entrypoint.create_app(routes, extra)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.args.host, self.args.port)
        try:
            await site.start()
        except OSError as exc:
            await self.runner.cleanup()
            self.runner = None
            raise UpError(f"cannot listen on {self.args.host}:{self.args.port}: {exc.strerror or exc}"
                          f" (port in use? choose another with --port)") from None

    async def run(self) -> int:
        from veza_local.services import NatsService, PostgresService, RedisService, S3Service

        from . import entrypoint
        from .supervisor import Worker

        args, console = self.args, self.console
        paths = args.filename or [Path("examples")]
        if args.check:
            p = plan(paths, args.platform)
            for w in p.warnings:
                console.notice(w)
            console.step("CR files", ", ".join(str(x) for x in paths), "valid")
            return 0

        # The entry point first: a port in use fails before anything starts. Routes are filled in below.
        routes = entrypoint.Routes(default="http://127.0.0.1:9")
        bindings: dict[str, Any] = {"rooms": {}, "channels": {}}
        await self.start_entrypoint(routes, bindings)
        host = args.host if args.host not in ("0.0.0.0", "::") else "127.0.0.1"
        self.public_url = f"http://{host}:{args.port}"
        console.step("entry point", f"{args.host}:{args.port}", "listening")
        if args.reset:
            reset_data_dir(self.data_dir)
            console.step("data dir", str(self.data_dir), "reset")

        # moto's server is the slowest to start and keeps no state: it starts while the files are checked.
        try:
            s3_service = S3Service(self.data_dir)
        except ServiceError as exc:
            raise UpError(str(exc)) from None
        s3_start = asyncio.ensure_future(self.start_service(s3_service, "s3 (moto, in memory)"))
        p = await asyncio.to_thread(plan, paths, args.platform)
        for w in p.warnings:
            console.notice(w)
        console.step("CR files", ", ".join(str(x) for x in paths),
                     f"valid: VezaPlatform {p.platform.name}, {len(p.rooms)} ChatRoom(s), "
                     f"{len(p.channels)} StreamChannel(s)")
        bindings["rooms"] = {r.name: {"title": r.spec.get("title") or r.name,
                                      "channel": (r.spec.get("channelRef") or {}).get("name")} for r in p.rooms}
        bindings["channels"] = {c.name: {"title": c.spec.get("title") or c.name,
                                         "renditions": c.spec.get("renditions", [])} for c in p.channels}
        from .demo_audio import prepare_demo_tracks

        platform_s3 = p.platform.spec["connections"]["s3"]
        tones = asyncio.ensure_future(asyncio.to_thread(
            prepare_demo_tracks, [c.spec for c in p.channels], endpoint=s3_service.url,
            region=platform_s3.get("region", "us-east-1"), access_key=s3_service.access_key,
            secret_key=s3_service.secret_key))
        self.starting.append(tones)

        fresh = not (self.data_dir / "postgres" / "data" / "PG_VERSION").exists()
        use_redis = not args.no_redis and RedisService.available()
        if not use_redis:
            console.notice("Redis not started (" + ("--no-redis" if args.no_redis else
                           "redis-server is not installed: apt-get install redis-server") + "); the workers "
                           "use their in-process fallbacks: presence, rate limits and caches per process, "
                           "no member counts in the room list")
        try:
            services = Services(PostgresService(self.data_dir), NatsService(self.data_dir), s3_service,
                                RedisService(self.data_dir) if use_redis else None)
        except ServiceError as exc:
            raise UpError(str(exc)) from None
        # Addresses are chosen before the servers start, so every environment can be computed now.
        spec, secrets = local_platform_spec(p, services)
        keys_dir = self.data_dir / "jwt-keys"
        log_dir = self.data_dir / "logs"

        def env_for(component: str, resource: crfiles.Resource | None, port: int) -> dict[str, str]:
            return worker_environment(p, spec, secrets, component, resource, host="127.0.0.1", port=port,
                                      public_url=self.public_url, keys_dir=keys_dir)

        pg_start = asyncio.ensure_future(self.start_service(
            services.postgres, "postgres" + (" (initdb)" if fresh else "")))
        others = asyncio.ensure_future(asyncio.gather(
            self.start_service(services.nats, "nats (jetstream)"),
            s3_start,
            self.start_service(services.redis, "redis") if services.redis is not None else _none()))
        await asyncio.to_thread(ensure_keys, keys_dir)
        try:
            await pg_start
            # The migration Job: `veza migrate` with the API's environment; it needs PostgreSQL only.
            migrate = Worker("migrate", ["migrate"], env_for("api", None, 0), 0, log_dir)
            t = time.monotonic()
            migrate.start()
            self.workers.append(migrate)
            await others
        except ServiceError as exc:
            raise UpError(str(exc)) from None

        from .services import free_port

        demo = asyncio.ensure_future(self._demo_tracks(tones, spec, services))
        self.starting.append(demo)
        await asyncio.to_thread(migrate.wait)
        self.workers.remove(migrate)
        if migrate.exited() != 0:
            raise UpError(f"migrations failed (exit {migrate.exited()}); see {migrate.log_path}:\n"
                          + migrate.log_tail())
        console.step("migrations", "postgres", f"applied ({time.monotonic() - t:.1f} s)")

        api = Worker("api", ["api"], env_for("api", None, free_port()), 0, log_dir)
        api.port = int(api.env["VEZA_HTTP_PORT"])
        planned: list[tuple[Worker, str]] = [(api, "/ /api/v1 /.well-known")]
        for room in p.rooms:
            port = free_port()
            planned.append((Worker(f"chat-{room.name}", ["chat"], env_for("chat", room, port), port, log_dir),
                            f"/chat/{room.name}"))
        for channel in p.channels:
            port = free_port()
            planned.append((Worker(f"stream-{channel.name}", ["stream"], env_for("stream", channel, port), port,
                                   log_dir), f"/stream/{channel.name}"))
        for worker, _ in planned:
            if worker.name.startswith("stream-"):
                continue
            worker.start()
            self.workers.append(worker)
        made = await demo  # the channels' playlists must exist before their workers read them
        if made:
            console.step("demo tracks", f"s3://{spec.connections.s3.bucket}", ", ".join(made))
        for worker, _ in planned:
            if worker.name.startswith("stream-"):
                worker.start()
                self.workers.append(worker)
        routes.default = api.url
        for room in p.rooms:
            routes.prefixes[f"/chat/{room.name}"] = next(w.url for w, _ in planned if w.name == f"chat-{room.name}")
        for ch in p.channels:
            routes.prefixes[f"/stream/{ch.name}"] = next(w.url for w, _ in planned if w.name == f"stream-{ch.name}")
        await asyncio.gather(*(self._wait_ready(w, prefix) for w, prefix in planned))

        await self._declare(api, p)
        routes.ready = True  # until now the entry point answered 503 + Retry-After to everything (docs/local.md)
        console.line("")
        console.line(console.bold(f"Veza is up: {self.public_url}/") + f"   (ready in {console.elapsed().strip()})")
        console.line(f"  dev login: {DEV_EMAIL} / {DEV_PASSWORD} (platform admin)")
        console.line(f"  data: {self.data_dir} (logs in {log_dir}); Ctrl-C stops everything")
        console.line("")
        await self._watch()
        return 0

    async def _demo_tracks(self, tones: asyncio.Future[Any], spec: Any, services: Services) -> list[str]:
        from .demo_audio import upload_demo_tracks

        client, tracks = await tones
        return await asyncio.to_thread(upload_demo_tracks, client, tracks, spec.connections.s3.bucket)

    async def _wait_ready(self, worker: Any, route: str) -> None:
        t, timeout = time.monotonic(), 90.0
        while time.monotonic() - t < timeout:
            if worker.exited() is not None:
                raise UpError(f"{worker.name} exited with {worker.exited()} while starting; see {worker.log_path}:"
                              f"\n{worker.log_tail()}")
            if await asyncio.to_thread(worker.ready):
                self.console.step(worker.name, f"127.0.0.1:{worker.port}",
                                  f"ready ({time.monotonic() - t:.1f} s)  {route}")
                return
            await asyncio.sleep(0.1)
        raise UpError(f"{worker.name} not ready within {timeout:.0f} s; see {worker.log_path}:\n{worker.log_tail()}")

    async def _declare(self, api: Any, p: Plan) -> None:
        """The dev account (platform admin), and the rooms and channels in the API's directory."""
        base = f"{api.url}/api/v1"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            async def login() -> tuple[int, Any]:
                async with http.post(f"{base}/auth/login", json={"email": DEV_EMAIL, "password": DEV_PASSWORD}) as r:
                    return r.status, await r.json()

            status, body = await login()
            if status == 401:
                async with http.post(f"{base}/auth/register", json={
                        "email": DEV_EMAIL, "password": DEV_PASSWORD, "display_name": DEV_NAME}) as r:
                    if r.status not in (201, 409):
                        raise UpError(f"could not create the dev account: {r.status} {await r.text()}")
                status, body = await login()
            if status != 200:
                raise UpError(f"dev login failed: {status} {json.dumps(body)}")
            auth = {"Authorization": f"Bearer {body['access_token']}"}
            for kind, items in (("rooms", p.rooms), ("channels", p.channels)):
                for res in items:
                    decl: dict[str, Any] = {"title": res.spec.get("title") or res.name,
                                            "visibility": res.spec.get("visibility", "public")}
                    if res.kind == "ChatRoom" and res.spec.get("members") is not None:
                        decl["members"] = res.spec["members"]
                    async with http.put(f"{base}/admin/{kind}/{res.name}", json=decl, headers=auth) as r:
                        if r.status not in (200, 201):
                            self.console.notice(f"could not declare {res.kind} {res.name!r} in the API: "
                                                f"{r.status} {await r.text()}")
        self.console.step("directory", "api", f"{len(p.rooms)} room(s), {len(p.channels)} channel(s) declared")

    async def _watch(self) -> None:
        """Until stopped: restart a crashed worker, as its Deployment would (with back-off)."""
        while True:
            await asyncio.sleep(0.5)
            for worker in self.workers:
                code = worker.exited()
                if code is None or self.stopping:
                    continue
                delay = min(30.0, 2.0 ** worker.restarts)
                if time.monotonic() - worker.started_at < delay:
                    continue
                self.console.notice(f"{worker.name} exited with {code}; restarting (see {worker.log_path}):\n"
                                    + worker.log_tail(5))
                worker.restarts += 1
                worker.start()

    async def shutdown(self) -> None:
        from .supervisor import stop_all

        self.stopping = True
        t = time.monotonic()
        started = self.runner is not None or bool(self.services or self.workers)
        if self.runner is not None:
            await self.runner.cleanup()  # closes client connections first, as an Ingress would drain
        await asyncio.to_thread(stop_all, self.workers, STOP_TIMEOUT)
        # Services still starting finish (or fail) before they can be stopped.
        await asyncio.gather(*self.starting, return_exceptions=True)
        await asyncio.gather(*(asyncio.to_thread(s.stop) for s in reversed(self.services)),
                             return_exceptions=True)
        if started:
            self.console.line(f"stopped in {time.monotonic() - t:.1f} s")


async def _none() -> None:
    return None


async def _main(args: argparse.Namespace, console: Console) -> int:
    up = Up(args, console)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    main = asyncio.ensure_future(up.run())
    signals = 0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            console.line(f"\n{sig.name}: stopping (again to force)...")
            main.cancel()
        else:
            from .supervisor import stop_all

            stop_all(up.workers, 0.1)
            for s in up.services:
                with contextlib.suppress(Exception):
                    s.kill()
            os._exit(130)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await main
    except asyncio.CancelledError:
        return 0
    finally:
        await up.shutdown()


def run(args: argparse.Namespace) -> int:
    console = Console()
    try:
        lock = None if args.check else lock_data_dir(args.data_dir.resolve())
    except UpError as exc:
        console.line(f"veza up: error: {exc}")
        return exc.status
    try:
        return asyncio.run(_main(args, console))
    except UpError as exc:
        console.line(f"veza up: error: {exc}")
        return exc.status
    except KeyboardInterrupt:
        return 130
    finally:
        if lock is not None:
            lock.close()

