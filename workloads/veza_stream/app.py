"""The stream worker's application: the routes under `/stream/{channel}/`, the channel's services under their
app keys, and the worker's lifecycle tied to the app's."""

from __future__ import annotations

import asyncio

from aiohttp import web

from veza_core.web import add_readiness_check, create_app

from . import hls_routes, ingest, now_playing, progressive, tracks
from .access import ACCESS
from .channel import CHANNEL
from .hls import INIT_NAME
from .leadership import LEADERSHIP
from .library import LIBRARY
from .listeners import LISTENERS
from .settings import StreamSettings
from .worker import Worker


def add_routes(app: web.Application) -> None:
    prefix = "/stream/{channel}"
    app.router.add_get(f"{prefix}/now-playing", now_playing.now_playing)
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


def create_stream_app(settings: StreamSettings) -> web.Application:
    """The app for the StreamChannel of `settings` (ValueError or ValidationError if they do not describe one)."""
    worker = Worker(settings)
    app = create_app("stream")  # no handler reads a body whole: uploads and sources stream theirs
    app.middlewares.append(ingest.server_options)
    app[CHANNEL] = worker.channel
    app[ACCESS] = worker.access
    app[LEADERSHIP] = worker.leadership
    app[LISTENERS] = worker.listeners
    app[LIBRARY] = worker.library
    app[tracks.UPLOAD_SLOTS] = asyncio.Semaphore(settings.stream_max_uploads)
    add_routes(app)

    async def start(app: web.Application) -> None:
        await worker.start()

    async def stop(app: web.Application) -> None:
        await worker.stop()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    add_readiness_check(app, "s3", worker.s3_ready)
    if settings.nats_url:
        add_readiness_check(app, "nats", worker.nats_ready)
    return app
