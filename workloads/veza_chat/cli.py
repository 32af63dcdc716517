"""`veza chat`: run the chat worker for the ChatRoom named in VEZA_RESOURCE_NAME, or (`--pool`) a pool worker
serving every room the platform's directory marks pooled.

The one place the worker reads its environment (`ChatSettings.from_env`); flags override it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from veza_core import web as core_web
from veza_core.logs import configure_logging
from veza_core.tracing import configure_tracing

from .settings import ChatSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="listen address (default: VEZA_HTTP_HOST)")
    parser.add_argument("--port", type=int, help="listen port (default: VEZA_HTTP_PORT)")
    parser.add_argument("--no-migrate", action="store_true",
                        help="do not apply database migrations at start (a migration Job does it)")
    parser.add_argument("--pool", action="store_true",
                        help="serve every pooled room of the platform (opened on first use) instead of one room")
    parser.add_argument("--purge", action="store_true",
                        help="delete the room's whole history, then exit (deletionPolicy Delete runs this as a Job)")


async def purge(settings: ChatSettings) -> int:
    from .store import Store

    if not settings.resource_name or not settings.database_url:
        raise SystemExit("VEZA_RESOURCE_NAME and VEZA_DATABASE_URL are required")
    store = Store(settings.database_url, settings.resource_name)
    await store.open(declare=False)
    try:
        deleted = await store.purge()
    finally:
        await store.close()
    logging.getLogger("veza.chat").info("history purged", extra={"room": settings.resource_name, "events": deleted})
    return 0


def run(args: argparse.Namespace) -> int:
    from .app import create_app

    settings = ChatSettings.from_env().model_copy(update={"component": "chat"})
    configure_logging("chat", settings.log_level)
    configure_tracing("chat")
    if args.purge:
        return asyncio.run(purge(settings))
    if args.no_migrate:
        settings = settings.model_copy(update={"chat_migrate": False})
    app = create_app(settings, pooled=args.pool)
    core_web.run(app, args.host or settings.http_host, args.port or settings.http_port,
                 shutdown_grace=settings.shutdown_grace_seconds, backlog=settings.chat_listen_backlog,
                 event_loop=settings.event_loop)
    return 0
