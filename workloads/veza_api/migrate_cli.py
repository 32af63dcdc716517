"""`veza migrate`: apply the schema migrations (the operator's migration Job runs this).

Safe to run concurrently: `veza_core.db.migrate` holds a PostgreSQL advisory
lock, so a second run waits and then finds nothing left to do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys

from veza_core.db import migrate
from veza_core.logs import configure_logging

log = logging.getLogger("veza.migrate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", default=os.environ.get("VEZA_DATABASE_URL"),
                        help="PostgreSQL URL (default: $VEZA_DATABASE_URL)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="give up after this many seconds (waiting for the lock included)")


def run(args: argparse.Namespace) -> int:
    configure_logging("migrate", os.environ.get("VEZA_LOG_LEVEL", "INFO"))
    if not args.database_url:
        print("veza migrate: no database URL (--database-url or VEZA_DATABASE_URL)", file=sys.stderr)
        return 2
    try:
        applied = asyncio.run(asyncio.wait_for(migrate(args.database_url), args.timeout))
    except (OSError, TimeoutError) as exc:
        log.error("migration failed", extra={"error": repr(exc)})
        return 1
    print(json.dumps({"applied": applied}))
    return 0
