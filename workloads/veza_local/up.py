"""`veza up`: the whole platform on this machine, from the same CR YAML files a cluster gets.

Reads and validates the VezaPlatform / ChatRoom / StreamChannel files (as the API
server would), starts PostgreSQL, NATS (JetStream), Redis (when installed) and an
S3 endpoint, runs the migrations, then runs the API, one chat worker per
ChatRoom and one stream worker per StreamChannel with the environment the
operator gives their pods (`veza_operator.wiring.worker_env`), behind one HTTP
entry point with the Ingress's routes. Ctrl-C stops everything. See docs/local.md.

`Up.run` reads as the list of those steps, one method each; the settings (`UpSettings`) are read
from the environment once, in `run`, and passed down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import fcntl
import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from aiohttp import web

import veza_web
from veza_core import keys
from veza_core.eventloop import new_event_loop
from veza_operator import wiring
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

from . import crfiles, entrypoint
from .demo_audio import prepare_demo_tracks, upload_demo_tracks
from .services import LocalService, NatsService, PostgresService, RedisService, S3Service, ServiceError, free_port
from .settings import UpSettings
from .supervisor import Worker, stop_all

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
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where PostgreSQL, NATS, keys and logs live across runs "
                             "(default: $VEZA_DATA_DIR or .veza)")
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

    def __init__(self, stream: TextIO, *, color: bool) -> None:
        self.stream = stream
        self.t0 = time.monotonic()
        color = color and stream.isatty()
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


def lock_data_dir(data_dir: Path) -> TextIO:
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
    postgres: PostgresService
    nats: NatsService
    s3: S3Service
    redis: RedisService | None

    def all(self) -> list[LocalService]:
        return [s for s in (self.postgres, self.nats, self.redis, self.s3) if s is not None]


def local_platform_spec(p: Plan, services: Services) -> tuple[VezaPlatformSpec, dict[str, dict[str, str]]]:
    """The platform spec with `connections` pointing at the local services, and the Secrets to resolve it."""
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


def worker_environment(p: Plan, spec: VezaPlatformSpec, secrets: dict[str, dict[str, str]], component: str,
                       resource: crfiles.Resource | None, *, host: str, port: int, public_url: str,
                       keys_dir: Path) -> dict[str, str]:
    """The operator's wiring for this worker, then the few values that must differ on one machine."""
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
        # No SMTP here: mails (login links, the dev account's confirmation) are files in the data dir.
        resolved["VEZA_MAIL_DIR"] = str(keys_dir.parent / "mail")
    return resolved


def confirmation_token(mail_dir: Path, address: str) -> str | None:
    """The token of the newest registration confirmation the API wrote to `mail_dir` for `address`."""
    for path in sorted(mail_dir.glob("*.eml"), reverse=True):
        message = email.message_from_bytes(path.read_bytes())
        if message["To"] != address:
            continue
        payload = message.get_payload(decode=True)
        text = payload.decode() if isinstance(payload, bytes) else ""
        found = re.search(r"#token=([A-Za-z0-9_\-]+)&confirm=1", text)
        return found.group(1) if found else None
    return None


# -- the run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalWiring:
    """What every worker's environment is computed from. Addresses are chosen before the servers start, so
    every environment is known before anything runs."""

    plan: Plan
    spec: VezaPlatformSpec
    secrets: dict[str, dict[str, str]]
    keys_dir: Path
    public_url: str

    def env(self, component: str, resource: crfiles.Resource | None, port: int) -> dict[str, str]:
        return worker_environment(self.plan, self.spec, self.secrets, component, resource, host="127.0.0.1",
                                  port=port, public_url=self.public_url, keys_dir=self.keys_dir)


@dataclass
class Planned:
    """A worker of the run and the entry point's route to it."""

    worker: Worker
    route: str


class Up:
    """One run of `veza up`: its steps in order (`run`), and what they started, for `shutdown`."""

    def __init__(self, settings: UpSettings, console: Console) -> None:
        self.settings = settings
        self.console = console
        self.data_dir = settings.data_dir
        self.keys_dir = self.data_dir / "jwt-keys"
        self.log_dir = self.data_dir / "logs"
        # Until `ready`, the entry point answers 503 to everything; the routes are filled in once workers are planned.
        self.routes = entrypoint.Routes(default="http://127.0.0.1:9")
        self.bindings: dict[str, Any] = {"rooms": {}, "channels": {}}  # the web client's listen-along bindings
        self.services: list[LocalService] = []
        self.starting: list[asyncio.Future[Any]] = []
        self.workers: list[Worker] = []
        self.runner: web.AppRunner | None = None
        self.stopping = False
        self.public_url = ""

    async def run(self) -> int:
        if self.settings.check:
            self.check_files()
            return 0
        await self.open_entry_point()  # first: a port in use fails before anything starts
        if self.settings.reset:
            reset_data_dir(self.data_dir)
            self.console.step("data dir", str(self.data_dir), "reset")
        # moto's server is the slowest to start and keeps no state: it starts while the files are checked.
        s3 = S3Service(self.data_dir)
        s3_started = asyncio.ensure_future(self.start_service(s3, "s3 (moto, in memory)"))
        p = await self.read_files()
        tones = self.make_demo_tones(p, s3)
        services = self.choose_services(s3)
        spec, secrets = local_platform_spec(p, services)
        local = LocalWiring(p, spec, secrets, self.keys_dir, self.public_url)
        migrate = await self.start_services(services, s3_started, local)
        demo = self.in_background(self.upload_demo_tracks(tones, spec.connections.s3.bucket))
        await self.migrate(migrate)
        planned = self.plan_workers(local)
        await self.start_workers(planned, demo, spec.connections.s3.bucket)
        self.route(planned)
        await asyncio.gather(*(self.wait_ready(w.worker, w.route) for w in planned))
        await self.declare(planned[0].worker, p)
        self.routes.ready = True  # until now the entry point answered 503 + Retry-After to everything (docs/local.md)
        self.announce()
        await self.supervise()
        return 0

    # -- the steps, in order ---------------------------------------------------------------------
    def check_files(self) -> None:
        """`--check`: the files as the API server would validate them, nothing started."""
        paths = list(self.settings.files)
        p = plan(paths, self.settings.platform)
        for w in p.warnings:
            self.console.notice(w)
        self.console.step("CR files", ", ".join(str(x) for x in paths), "valid")

    async def open_entry_point(self) -> None:
        app = entrypoint.create_app(self.routes, lambda app: veza_web.add_routes(app, config=lambda: self.bindings))
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self.runner.setup()
        host, port = self.settings.host, self.settings.port
        site = web.TCPSite(self.runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await self.runner.cleanup()
            self.runner = None
            raise UpError(f"cannot listen on {host}:{port}: {exc.strerror or exc}"
                          f" (port in use? choose another with --port)") from None
        self.public_url = f"http://{host if host not in ('0.0.0.0', '::') else '127.0.0.1'}:{port}"
        self.console.step("entry point", f"{host}:{port}", "listening")

    async def read_files(self) -> Plan:
        """The CR files, validated; the web client's bindings from them."""
        paths = list(self.settings.files)
        p = await asyncio.to_thread(plan, paths, self.settings.platform)
        for w in p.warnings:
            self.console.notice(w)
        self.console.step("CR files", ", ".join(str(x) for x in paths),
                          f"valid: VezaPlatform {p.platform.name}, {len(p.rooms)} ChatRoom(s), "
                          f"{len(p.channels)} StreamChannel(s)")
        self.bindings["rooms"] = {r.name: {"title": r.spec.get("title") or r.name,
                                           "channel": (r.spec.get("channelRef") or {}).get("name")} for r in p.rooms}
        self.bindings["channels"] = {c.name: {"title": c.spec.get("title") or c.name,
                                              "renditions": c.spec.get("renditions", [])} for c in p.channels}
        return p

    def make_demo_tones(self, p: Plan, s3: S3Service) -> asyncio.Future[Any]:
        """The playlists' demo tones, encoded in a thread while the services start (S3 need not be up yet)."""
        return self.in_background(asyncio.to_thread(
            prepare_demo_tracks, [c.spec for c in p.channels], endpoint=s3.url,
            region=p.platform.spec["connections"]["s3"].get("region", "us-east-1"), access_key=s3.access_key,
            secret_key=s3.secret_key))

    def choose_services(self, s3: S3Service) -> Services:
        """The backing services of this run (Redis when installed and not refused), on addresses chosen now."""
        use_redis = not self.settings.no_redis and RedisService.available()
        if not use_redis:
            self.console.notice("Redis not started (" + ("--no-redis" if self.settings.no_redis else
                                "redis-server is not installed: apt-get install redis-server") + "); the workers "
                                "use their in-process fallbacks: presence, rate limits and caches per process, "
                                "no member counts in the room list")
        try:
            return Services(PostgresService(self.data_dir), NatsService(self.data_dir), s3,
                            RedisService(self.data_dir) if use_redis else None)
        except ServiceError as exc:
            raise UpError(str(exc)) from None

    async def start_services(self, services: Services, s3_started: asyncio.Future[Any], local: LocalWiring
                             ) -> Worker:
        """PostgreSQL, NATS and Redis in parallel (S3 is on its way); the migration Job starts as soon as
        PostgreSQL is up, while the others finish. Returns the migration, running."""
        fresh = not (self.data_dir / "postgres" / "data" / "PG_VERSION").exists()
        pg_started = asyncio.ensure_future(self.start_service(
            services.postgres, "postgres" + (" (initdb)" if fresh else "")))
        others = asyncio.ensure_future(asyncio.gather(
            self.start_service(services.nats, "nats (jetstream)"),
            s3_started,
            self.start_service(services.redis, "redis") if services.redis is not None else _none()))
        await asyncio.to_thread(ensure_keys, self.keys_dir)
        try:
            await pg_started
            # The migration Job: `veza migrate` with the API's environment; it needs PostgreSQL only.
            migrate = self.worker("migrate", "migrate", local.env("api", None, 0), 0)
            migrate.start()
            self.workers.append(migrate)
            await others
        except ServiceError as exc:
            raise UpError(str(exc)) from None
        return migrate

    async def upload_demo_tracks(self, tones: Awaitable[Any], bucket: str) -> list[str]:
        """The tones into the bucket (made if missing), once S3 is up; the keys uploaded."""
        client, tracks = await tones
        return await asyncio.to_thread(upload_demo_tracks, client, tracks, bucket)

    async def migrate(self, migrate: Worker) -> None:
        """Until the migration Job is done; its failure ends the run."""
        await asyncio.to_thread(migrate.wait)
        self.workers.remove(migrate)
        if migrate.exited() != 0:
            raise UpError(f"migrations failed (exit {migrate.exited()}); see {migrate.log_path}:\n"
                          + migrate.log_tail())
        self.console.step("migrations", "postgres", f"applied ({time.monotonic() - migrate.started_at:.1f} s)")

    def plan_workers(self, local: LocalWiring) -> list[Planned]:
        """The API first, then one chat worker per ChatRoom and one stream worker per StreamChannel."""
        api_port = free_port()
        planned = [Planned(self.worker("api", "api", local.env("api", None, api_port), api_port),
                           "/ /api/v1 /.well-known")]
        for room in local.plan.rooms:
            port = free_port()
            planned.append(Planned(self.worker(f"chat-{room.name}", "chat", local.env("chat", room, port), port),
                                   f"/chat/{room.name}"))
        for channel in local.plan.channels:
            port = free_port()
            planned.append(Planned(self.worker(f"stream-{channel.name}", "stream",
                                               local.env("stream", channel, port), port),
                                   f"/stream/{channel.name}"))
        return planned

    async def start_workers(self, planned: list[Planned], demo: asyncio.Future[list[str]], bucket: str) -> None:
        """Every worker; the stream workers once the demo tracks are in S3, as their playlists name them."""
        streams = [p.worker for p in planned if p.worker.name.startswith("stream-")]
        for worker in (p.worker for p in planned if p.worker not in streams):
            worker.start()
            self.workers.append(worker)
        made = await demo
        if made:
            self.console.step("demo tracks", f"s3://{bucket}", ", ".join(made))
        for worker in streams:
            worker.start()
            self.workers.append(worker)

    def route(self, planned: list[Planned]) -> None:
        """The Ingress's routes: `/chat/<room>` and `/stream/<channel>` to their workers, the rest to the API."""
        api, *others = planned
        self.routes.default = api.worker.url
        for p in others:
            self.routes.prefixes[p.route] = p.worker.url

    async def wait_ready(self, worker: Worker, route: str) -> None:
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

    async def declare(self, api: Worker, p: Plan) -> None:
        """The dev account (platform admin), and the rooms and channels in the API's directory."""
        base = f"{api.url}/api/v1"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            async def login() -> tuple[int, Any]:
                async with http.post(f"{base}/auth/login", json={"email": DEV_EMAIL, "password": DEV_PASSWORD}) as r:
                    return r.status, await r.json()

            status, body = await login()
            if status == 401:
                # A new dev account is confirmed with the link the API mailed (a file here), which makes it the
                # platform admin (VEZA_BOOTSTRAP_ADMIN_EMAIL counts only once the address is proven).
                async with http.post(f"{base}/auth/register", json={
                        "email": DEV_EMAIL, "password": DEV_PASSWORD, "display_name": DEV_NAME}) as r:
                    if r.status != 202:
                        raise UpError(f"could not create the dev account: {r.status} {await r.text()}")
                token = confirmation_token(self.data_dir / "mail", DEV_EMAIL)
                if token is None:
                    status, body = await login()
                else:
                    async with http.post(f"{base}/auth/magic-link/verify",
                                         json={"token": token, "password": DEV_PASSWORD}) as r:
                        status, body = r.status, await r.json()
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

    def announce(self) -> None:
        console = self.console
        console.line("")
        console.line(console.bold(f"Veza is up: {self.public_url}/") + f"   (ready in {console.elapsed().strip()})")
        console.line(f"  dev login: {DEV_EMAIL} / {DEV_PASSWORD} (platform admin)")
        console.line(f"  data: {self.data_dir} (logs in {self.log_dir}); Ctrl-C stops everything")
        console.line("")

    async def supervise(self) -> None:
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

    # -- helpers of the steps ----------------------------------------------------------------------
    async def start_service(self, service: LocalService, label: str) -> LocalService:
        t = time.monotonic()
        self.services.append(service)
        started = self.in_background(asyncio.to_thread(service.start))
        await asyncio.shield(started)
        self.console.step(label, f"{service.host}:{service.port}", f"ready ({time.monotonic() - t:.1f} s)")
        return service

    def in_background(self, work: Awaitable[Any]) -> asyncio.Future[Any]:
        """Work that runs on while the steps go on; a shutdown waits for it before it stops the services."""
        future = asyncio.ensure_future(work)
        self.starting.append(future)
        return future

    def worker(self, name: str, command: str, env: dict[str, str], port: int) -> Worker:
        return Worker(name, [command], env, port, self.log_dir, base_env=self.settings.environ)


async def _none() -> None:
    return None


async def _main(settings: UpSettings, console: Console) -> int:
    up = Up(settings, console)
    loop = asyncio.get_running_loop()
    main = asyncio.ensure_future(up.run())
    signals = 0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            console.line(f"\n{sig.name}: stopping (again to force)...")
            main.cancel()
        else:
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
    settings = UpSettings.from_args(args, os.environ)  # the only read of the environment; passed down from here
    console = Console(sys.stderr, color=settings.color)
    try:
        lock = None if settings.check else lock_data_dir(settings.data_dir)
    except UpError as exc:
        console.line(f"veza up: error: {exc}")
        return exc.status
    try:
        # The front door and the supervisor on the loop the workers serve on (VEZA_EVENT_LOOP).
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(_main(settings, console))
    except UpError as exc:
        console.line(f"veza up: error: {exc}")
        return exc.status
    except KeyboardInterrupt:
        return 130
    finally:
        if lock is not None:
            lock.close()
