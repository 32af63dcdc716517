"""The chat worker's application: one aiohttp app serving one ChatRoom, or a pool of them (WebSocket, REST
history, health, metrics), with the worker on it under `WORKER` and its lifecycle tied to the app's."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from veza_core import web as core_web
from veza_core.web import HttpError

from . import metrics
from .routes import add_routes
from .settings import ChatSettings
from .worker import WORKER, ChatWorker


@web.middleware
async def count_refusals(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Every HTTP refusal counts in veza_chat_errors_total under its code, like error frames do."""
    try:
        return await handler(request)
    except HttpError as exc:
        metrics.ERRORS.labels(exc.code).inc()
        raise


def create_app(settings: ChatSettings, *, pooled: bool = False,
               clock: Callable[[], float] = time.time) -> web.Application:
    app = core_web.create_app("chat")
    app.middlewares.append(count_refusals)  # inside `observe`, which renders the HttpError
    worker = ChatWorker(settings, pooled=pooled, clock=clock)
    app[WORKER] = worker
    add_routes(app)

    async def booted() -> bool:
        return worker.booted.is_set()

    core_web.add_readiness_check(app, "database", booted)

    async def on_startup(app: web.Application) -> None:
        await app[WORKER].start()

    async def on_shutdown(app: web.Application) -> None:
        await app[WORKER].shutdown()

    async def on_cleanup(app: web.Application) -> None:
        await app[WORKER].cleanup()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app
