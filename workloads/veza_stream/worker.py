"""The stream worker: one StreamChannel, its HTTP routes, leadership and replication."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from typing import Any

from aiohttp import web

from veza_core import bus, directory
from veza_core.auth import AUDIENCE_STREAM, TokenVerifier
from veza_core.config import Settings
from veza_core.keys import KeySet
from veza_core.storage import ObjectStore
from veza_core.web import add_readiness_check, create_app, json_error

from . import hls_routes, ingest, progressive, tracks
from .channel import Channel
from .hls import INIT_NAME
from .icy import DEFAULT_METAINT
from .leader import LeaderLock
from .limits import ListenerCounter
from .metrics import LEADER
from .pump import Batch
from .recording import Recorder
from .relay import RelayPuller
from .replication import WireError, decode_batch, encode_batch
from .spec import ChannelSpec
from .state import WORKER
from .transcoder import Chunk

log = logging.getLogger(__name__)


def advertised_url(host: str, port: int) -> str:
    """This replica's URL for the others: its listen address, or the pod's address when it listens on all."""
    if host in ("", "0.0.0.0", "::"):
        host = os.environ.get("POD_IP") or ""
        if not host:
            try:
                host = socket.gethostbyname(socket.gethostname())
            except OSError:
                host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Worker:
    def __init__(self, settings: Settings, *, source_password: str | None = None, metaint: int = DEFAULT_METAINT,
                 leader_ttl: float = 3.0, write_interval: float = 0.25, relay_max_backoff: float = 30.0,
                 recording_seconds: float = 60.0, advertise_url: str | None = None,
                 hls_part_seconds: float = 0.0) -> None:
        if not settings.resource_name:
            raise ValueError("VEZA_RESOURCE_NAME (the StreamChannel name) is required")
        self.settings = settings
        self.spec = ChannelSpec.model_validate(settings.resource_spec)
        self.store = ObjectStore(settings.s3_bucket, endpoint_url=settings.s3_endpoint, region=settings.s3_region,
                                 access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
                                 secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"))
        self.channel = Channel(settings.resource_name, self.spec, self._fetch, write_interval=write_interval,
                               hls_part_seconds=hls_part_seconds)
        self.source_password = source_password
        self.metaint = metaint
        self.leader_ttl = leader_ttl
        self.identity = f"{socket.gethostname()}-{os.getpid()}"
        # Where the other replicas reach this one (live sources are forwarded to the leader's).
        self.advertise_url = advertise_url or advertised_url(settings.http_host, settings.http_port)
        self.verifier: TokenVerifier | None = None
        if settings.jwt_keys_dir is not None:
            self.verifier = TokenVerifier(KeySet(settings.jwt_keys_dir), issuer=settings.jwt_issuer,
                                          audience=AUDIENCE_STREAM, algorithms=settings.jwt_algorithms)
        self.nc: Any = None
        self.lock: LeaderLock | None = None
        self.now_playing_key = ""
        self.counter: ListenerCounter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._publishing: set[asyncio.Task[None]] = set()
        self.recorder: Recorder | None = None
        hls = self.spec.delivery.hls
        if self.spec.recording.enabled or (hls.enabled and hls.archive):
            self.recorder = Recorder(self.store, self.channel.name, {r.name: r.codec for r in self.spec.renditions},
                                     seconds=recording_seconds)
            if self.spec.recording.enabled:
                self.channel.on_encoded.append(self.recorder.on_batch)  # only batches this replica encodes
            if hls.enabled and hls.archive:
                self.channel.on_segment.append(self.recorder.on_segment)
        self.relay: RelayPuller | None = None
        self._relay_task: asyncio.Task[None] | None = None
        if self.channel.relay is not None:
            self.relay = RelayPuller(self.channel.name, self.spec.source.relay, self.channel.relay,
                                     min_backoff=min(1.0, relay_max_backoff), max_backoff=relay_max_backoff)

    def subject(self, *event: str) -> str:
        return bus.subject(self.settings.platform, "channel", self.channel.name, *event)

    def _fetch(self, key: str) -> bytes:
        """Blocking S3 read for the playlist thread."""
        return bytes(self.store.client.get_object(Bucket=self.store.bucket, Key=key)["Body"].read())

    # -- lifecycle ------------------------------------------------------------------------------------
    async def start(self, app: web.Application) -> None:
        if self.settings.nats_url:
            self.nc = await bus.connect(self.settings.nats_url, name=f"veza-stream-{self.channel.name}")
            await self.nc.subscribe(self.subject("audio"), cb=self._on_audio)
            self.channel.on_encoded.append(self._publish_audio)
            self.channel.on_title.append(self._publish_title)
            self._tasks.append(asyncio.create_task(self._publish_listeners()))
        if self.settings.redis_url:
            from redis.asyncio import Redis

            redis = Redis.from_url(self.settings.redis_url, socket_timeout=1, socket_connect_timeout=1)
            base = f"veza:{self.settings.platform}:stream:{self.channel.name}"
            self.lock = LeaderLock(redis, f"{base}:leader", ttl=self.leader_ttl,
                                   identity=f"{self.identity}|{self.advertise_url}")
            self._tasks.append(asyncio.create_task(self.lock.run(self._elected, self._deposed)))
            self.counter = ListenerCounter(redis, f"{base}:listeners", self.identity, self.channel.listener_count)
            self._tasks.append(asyncio.create_task(self.counter.run()))
            # The API reads now-playing from this hash (docs/api.md, Redis contract).
            self.now_playing_key = f"veza:{self.settings.platform}:channel:{self.channel.name}:now_playing"
            self.channel.on_title.append(self._store_title)
        else:
            await self._elected()  # a single replica without Redis encodes on its own
        if self.settings.database_url:
            self._tasks.append(asyncio.create_task(self._declare()))

    async def stop(self, app: web.Application) -> None:
        await self._stop_relay()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        await self.channel.close()
        if self.recorder is not None:
            await self.recorder.stop()
        if self.counter is not None:
            await self.counter.clear()
        if self.lock is not None:
            await self.lock.release()
            await self.lock.redis.aclose()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()

    async def _elected(self) -> None:
        LEADER.labels(self.channel.name).set(1)
        if self.recorder is not None:
            self.recorder.start()
        self.channel.start_encoding()
        if self.relay is not None and self._relay_task is None:
            self._relay_task = asyncio.create_task(self.relay.run())  # only the encoder pulls the upstream

    async def _deposed(self) -> None:
        LEADER.labels(self.channel.name).set(0)
        await self._stop_relay()
        await self.channel.stop_encoding()

    async def _stop_relay(self) -> None:
        if self._relay_task is not None:
            self._relay_task.cancel()
            with contextlib.suppress(BaseException):
                await self._relay_task
            self._relay_task = None

    # -- replication ----------------------------------------------------------------------------------
    def _publish_audio(self, batch: Batch, title: str) -> None:
        if self.nc is None or not self.nc.is_connected:
            return
        # Every batch leads with each rendition's codec header (the channel received ours first), so a replica
        # that starts after the encoder can serve Ogg listeners and HLS init segments; receivers drop repeats.
        for rendition, chunks in batch.items():
            header = self.channel.headers.get(rendition)
            if header is not None and not (chunks and chunks[0].header):
                batch = {**batch, rendition: [Chunk(header, 0, 0, header=True), *chunks]}
        task = asyncio.create_task(self.nc.publish(self.subject("audio"), encode_batch(batch, title)))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _on_audio(self, msg: Any) -> None:
        if self.channel.encoding:
            return  # our own batches (or a stale leader's): we serve what we encode
        try:
            batch, title = decode_batch(msg.data)
        except WireError as exc:
            log.warning("bad audio message", extra={"error": str(exc)})
            return
        self.channel.receive(batch, title)

    async def _declare(self) -> None:
        """Declare the channel in the platform's directory (the API lists it), retrying until it works."""
        import asyncpg

        assert self.settings.database_url is not None
        for attempt in range(60):
            try:
                conn = await asyncpg.connect(self.settings.database_url, timeout=5)
                try:
                    await directory.declare(conn, "channel", self.channel.name, self.spec.title or self.channel.name,
                                            self.spec.visibility)
                finally:
                    await conn.close()
                return
            except Exception as exc:  # the database may come up after us, or not have the tables yet
                log.info("channel not declared yet", extra={"attempt": attempt, "error": repr(exc)})
                await asyncio.sleep(min(30.0, 1.0 + attempt))

    def _store_title(self, title: str) -> None:
        if self.lock is None or not self.channel.encoding:
            return
        redis, key = self.lock.redis, self.now_playing_key

        async def store() -> None:
            with contextlib.suppress(Exception):  # Redis down: the worker's own /now-playing still answers
                async with redis.pipeline(transaction=True) as pipe:
                    pipe.hset(key, mapping={"title": title, "started_at": str(time.time()),
                                            "channel": self.channel.name})
                    pipe.expire(key, 86400)
                    await pipe.execute()

        task = asyncio.create_task(store())
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    def _publish_title(self, title: str) -> None:
        if self.nc is None or not self.channel.encoding:
            return
        body = json.dumps({"channel": self.channel.name, "title": title, "at": time.time()}).encode()
        task = asyncio.create_task(self.nc.publish(self.subject("nowplaying"), body))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish_listeners(self) -> None:
        while True:
            await asyncio.sleep(5)
            if self.nc is not None and self.nc.is_connected:
                counts = {n: len(f.listeners) for n, f in self.channel.feeds.items()}
                body = {"channel": self.channel.name, "replica": self.identity, "listeners": counts, "at": time.time()}
                with contextlib.suppress(Exception):
                    await self.nc.publish(self.subject("listeners"), json.dumps(body).encode())

    async def leader_url(self) -> str | None:
        """The base URL of the replica that encodes, from the leader lock's value (None if unknown or us)."""
        if self.lock is None:
            return None
        try:
            value = await asyncio.wait_for(self.lock.redis.get(self.lock.key), 1)
        except Exception:
            return None
        if not value:
            return None
        holder, _, url = (value.decode() if isinstance(value, bytes) else str(value)).partition("|")
        if holder == self.identity or not url.startswith("http://"):
            return None
        return url

    def listener_total(self) -> int:
        """Listeners across replicas (per replica without Redis or while it is unreachable)."""
        return self.counter.total() if self.counter is not None else self.channel.listener_count()

    # -- small handlers -------------------------------------------------------------------------------
    def now_playing(self) -> dict[str, Any]:
        ch = self.channel
        return {"channel": ch.name, "title": ch.title, "since": ch.title_changed_at,
                "source": ch.pump.on_air if ch.pump else None, "leader": ch.encoding,
                "listeners": {n: len(f.listeners) for n, f in ch.feeds.items()},
                "listenersTotal": self.listener_total(),
                "renditions": [r.model_dump(by_alias=True) for r in ch.spec.renditions],
                "relay": self.relay.status() if self.relay is not None else None}


async def now_playing(request: web.Request) -> web.Response:
    worker = request.app[WORKER]
    if request.match_info["channel"] != worker.channel.name:
        return json_error(404, "channel_not_found", "no such channel on this worker")
    return web.json_response(worker.now_playing())


def create_stream_app(worker: Worker) -> web.Application:
    app = create_app("stream", client_max_size=tracks.MAX_UPLOAD_BYTES)
    app.middlewares.append(ingest.server_options)
    app[WORKER] = worker
    prefix = "/stream/{channel}"
    app.router.add_get(f"{prefix}/now-playing", now_playing)
    app.router.add_get(f"{prefix}/hls/master.m3u8", hls_routes.master)
    app.router.add_get(f"{prefix}/hls/{{rendition}}/index.m3u8", hls_routes.media_playlist)
    app.router.add_get(f"{prefix}/hls/{{rendition}}/{INIT_NAME}", hls_routes.init)
    app.router.add_get(f"{prefix}/hls/{{rendition}}/{{sequence:\\d+}}.{{part:\\d+}}.{{ext}}", hls_routes.part)
    app.router.add_get(f"{prefix}/hls/{{rendition}}/{{sequence:\\d+}}.{{ext}}", hls_routes.segment)
    app.router.add_put(f"{prefix}/source", ingest.source, expect_handler=ingest.expect_continue)
    app.router.add_route("SOURCE", f"{prefix}/source", ingest.legacy_source)
    app.router.add_get(f"{prefix}/admin/metadata", ingest.metadata)
    app.router.add_get("/admin/metadata", ingest.metadata)  # Icecast's path; the mount names the channel
    app.router.add_post(f"{prefix}/tracks", tracks.upload)
    app.router.add_get(f"{prefix}/{{rendition}}", progressive.listen)
    app.on_startup.append(worker.start)
    app.on_shutdown.append(worker.stop)

    async def s3_ready() -> bool:
        return await worker.store.ready()

    async def nats_ready() -> bool:
        return worker.nc is not None and bool(worker.nc.is_connected)

    add_readiness_check(app, "s3", s3_ready)
    if worker.settings.nats_url:
        add_readiness_check(app, "nats", nats_ready)
    return app

