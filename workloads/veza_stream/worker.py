"""The stream worker's lifecycle and dependencies: one StreamChannel, built from the settings.

`Worker` builds the channel and its services (:mod:`leadership`, :mod:`listeners`,
:mod:`replicator`, :mod:`announcer`, :mod:`library`, :mod:`access`), opens NATS and Redis
at start, and stops everything in an order that hands over cleanly: encoding stops before
the leader lock is released, so a successor never encodes alongside us.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any

from redis.asyncio import Redis

from veza_core import bus
from veza_core.auth import AUDIENCE_STREAM, TokenVerifier
from veza_core.keys import KeySet
from veza_core.storage import ObjectStore

from .access import Access
from .announcer import Announcer
from .channel import Channel
from .leadership import Leadership
from .library import TrackLibrary
from .listeners import Listeners
from .recording import Recorder
from .relay import RelayPuller
from .replicator import Replicator
from .settings import StreamSettings
from .spec import ChannelSpec


def advertised_url(host: str, port: int, pod_ip: str | None = None) -> str:
    """This replica's URL for the others: its listen address, or the pod's address when it listens on all."""
    if host in ("", "0.0.0.0", "::"):
        host = pod_ip or ""
        if not host:
            try:
                host = socket.gethostbyname(socket.gethostname())
            except OSError:
                host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def recorder_for(store: ObjectStore, channel: Channel, spec: ChannelSpec, seconds: float) -> Recorder | None:
    """The recorder, hooked to the channel, when the spec records or archives HLS segments."""
    hls = spec.delivery.hls
    if not (spec.recording.enabled or (hls.enabled and hls.archive)):
        return None
    recorder = Recorder(store, channel.name, {r.name: r.codec for r in spec.renditions}, seconds=seconds)
    if spec.recording.enabled:
        channel.on_encoded.append(recorder.on_batch)  # only batches this replica encodes
    if hls.enabled and hls.archive:
        channel.on_segment.append(recorder.on_segment)
    return recorder


class Worker:
    def __init__(self, settings: StreamSettings) -> None:
        if not settings.resource_name:
            raise ValueError("VEZA_RESOURCE_NAME (the StreamChannel name) is required")
        self.settings = settings
        self.spec = ChannelSpec.model_validate(settings.resource_spec)
        self.store = ObjectStore(settings.s3_bucket, endpoint_url=settings.s3_endpoint, region=settings.s3_region,
                                 access_key=settings.aws_access_key_id, secret_key=settings.aws_secret_access_key)
        self.channel = Channel(settings.resource_name, self.spec, self._fetch,
                               write_interval=settings.stream_write_interval,
                               hls_part_seconds=settings.stream_ll_hls_part)
        name = self.channel.name
        identity = f"{socket.gethostname()}-{os.getpid()}"
        verifier = None
        if settings.jwt_keys_dir is not None:
            verifier = TokenVerifier(KeySet(settings.jwt_keys_dir), issuer=settings.jwt_issuer,
                                     audience=AUDIENCE_STREAM, algorithms=settings.jwt_algorithms)
        self.access = Access(name, private=self.spec.visibility == "private",
                             source_password=settings.source_password, verifier=verifier,
                             trusted_proxies=settings.trusted_proxies)
        relay = None
        if self.channel.relay is not None:
            backoff = settings.stream_relay_max_backoff
            relay = RelayPuller(name, self.spec.source.relay, self.channel.relay, min_backoff=min(1.0, backoff),
                                max_backoff=backoff, denied=settings.relay_denied_networks)
        self.recorder = recorder_for(self.store, self.channel, self.spec, settings.stream_recording_seconds)
        self.leadership = Leadership(
            self.channel, identity=identity, ttl=settings.stream_leader_ttl, relay=relay, recorder=self.recorder,
            advertise_url=settings.stream_advertise_url or advertised_url(settings.http_host, settings.http_port,
                                                                          settings.pod_ip))
        self.listeners = Listeners(self.channel, identity=identity, metaint=settings.stream_metaint, relay=relay)
        self.announcer = Announcer(self.channel, identity=identity)
        self.library = TrackLibrary(self.store, self.spec.renditions, name)
        self.nc: Any = None
        self.redis: Redis | None = None

    def subject(self, *event: str) -> str:
        return bus.subject(self.settings.platform, "channel", self.channel.name, *event)

    def _fetch(self, key: str) -> bytes:
        """Blocking S3 read for the playlist thread."""
        return bytes(self.store.client.get_object(Bucket=self.store.bucket, Key=key)["Body"].read())

    async def start(self) -> None:
        settings, name = self.settings, self.channel.name
        if settings.nats_url:
            self.nc = await bus.connect(settings.nats_url, name=f"veza-stream-{name}", auth=settings)
            await Replicator(self.channel, self.nc, self.subject("audio")).start()
            self.announcer.on_nats(self.nc, platform=settings.platform)
        if settings.redis_url:
            self.redis = Redis.from_url(settings.redis_url, socket_timeout=1, socket_connect_timeout=1)
            base = f"veza:{settings.platform}:stream:{name}"
            self.listeners.share_counts(self.redis, f"{base}:listeners")
            self.access.share_failures(self.redis, f"{base}:source-failures")
            # The API reads now-playing from this hash (docs/api.md, Redis contract).
            self.announcer.on_redis(self.redis, f"veza:{settings.platform}:channel:{name}:now_playing")
        # Without Redis a single replica encodes on its own.
        await self.leadership.start(self.redis, f"veza:{settings.platform}:stream:{name}:leader")
        if settings.database_url:
            self.announcer.in_directory(settings.database_url, self.spec.title or name, self.spec.visibility)

    async def stop(self) -> None:
        await self.leadership.stop_campaign()
        await self.listeners.stop()
        await self.announcer.stop()
        await self.channel.close()
        if self.recorder is not None:
            await self.recorder.stop()
        await self.listeners.clear()
        await self.leadership.release()
        if self.redis is not None:
            await self.redis.aclose()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()

    async def s3_ready(self) -> bool:
        return await self.store.ready()

    async def nats_ready(self) -> bool:
        return self.nc is not None and bool(self.nc.is_connected)
