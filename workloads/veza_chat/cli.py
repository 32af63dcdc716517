"""`veza chat`: run the chat worker for the ChatRoom named in VEZA_RESOURCE_NAME."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from veza_core import web as core_web
from veza_core.config import Settings
from veza_core.logs import configure_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="listen address (default: VEZA_HTTP_HOST)")
    parser.add_argument("--port", type=int, help="listen port (default: VEZA_HTTP_PORT)")
    parser.add_argument("--no-migrate", action="store_true",
                        help="do not apply database migrations at start (a migration Job does it)")
    parser.add_argument("--purge", action="store_true",
                        help="delete the room's whole history, then exit (deletionPolicy Delete runs this as a Job)")


async def purge(settings: Settings) -> int:
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
    from .server import create_app

    settings = Settings.from_env()
    settings = settings.model_copy(update={"component": "chat"})
    configure_logging("chat", settings.log_level)
    if args.purge:
        return asyncio.run(purge(settings))
    migrate = not args.no_migrate and os.environ.get("VEZA_CHAT_MIGRATE", "1") != "0"
    app = create_app(settings, run_migrations=migrate)
    core_web.run(app, args.host or settings.http_host, args.port or settings.http_port,
                 shutdown_grace=settings.shutdown_grace_seconds)
    return 0
