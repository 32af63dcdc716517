"""`veza migrate`: apply the schema migrations (the operator's migration Job runs this).

Safe to run concurrently: `veza_core.db.migrate` holds a PostgreSQL advisory
lock, so a second run waits and then finds nothing left to do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from veza_core.config import Settings
from veza_core.db import migrate
from veza_core.logs import configure_logging

log = logging.getLogger("veza.migrate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="PostgreSQL URL (default: $VEZA_DATABASE_URL)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="give up after this many seconds (waiting for the lock included)")


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()  # the environment, read once: VEZA_DATABASE_URL, VEZA_LOG_LEVEL
    configure_logging("migrate", settings.log_level)
    # The flag wins, even when given empty (then there is no URL).
    database_url = settings.database_url if args.database_url is None else args.database_url
    if not database_url:
        print("veza migrate: no database URL (--database-url or VEZA_DATABASE_URL)", file=sys.stderr)
        return 2
    try:
        applied = asyncio.run(asyncio.wait_for(migrate(database_url), args.timeout))
    except (OSError, TimeoutError) as exc:
        log.error("migration failed", extra={"error": repr(exc)})
        return 1
    print(json.dumps({"applied": applied}))
    return 0
