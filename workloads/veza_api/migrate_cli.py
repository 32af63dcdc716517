"""`veza migrate`: apply the schema migrations (the operator's migration Job runs this).

Safe to run concurrently: `veza_core.db.migrate` holds a PostgreSQL advisory
lock, so a second run waits and then finds nothing left to do.

Then the analytics store's own migrations, to `VEZA_ANALYTICS_DATABASE_URL` (default: the same database).

Then, when components connect with roles of their own, grant each what it needs
(`veza_core.grants`): `--grant chat=veza_chat`, or the URL the component uses in
`VEZA_DATABASE_URL_API`, `VEZA_DATABASE_URL_CHAT`, `VEZA_DATABASE_URL_STREAM` (its user is the role).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

import asyncpg

from veza_core.config import Settings
from veza_core.db import migrate
from veza_core.grants import COMPONENTS, grant, role_of
from veza_core.logs import configure_logging

from .services import analytics

log = logging.getLogger("veza.migrate")


class MigrateSettings(Settings):
    # The URLs the components connect with (the operator passes them from their Secrets): only their
    # user names are used, to grant those roles.
    database_url_api: str = ""
    database_url_chat: str = ""
    database_url_stream: str = ""
    # The analytics store (docs/analytics.md): its own migrations go there, by default to the platform's database.
    analytics_database_url: str = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="PostgreSQL URL (default: $VEZA_DATABASE_URL)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="give up after this many seconds (waiting for the lock included)")
    parser.add_argument("--grant", action="append", default=[], metavar="COMPONENT=ROLE",
                        help=f"after migrating, grant ROLE what COMPONENT needs ({', '.join(COMPONENTS)}); "
                             "repeatable")


def roles_to_grant(settings: MigrateSettings, flags: list[str]) -> dict[str, str]:
    """component -> role, from the component URLs in the environment, then the --grant flags."""
    roles = {c: role_of(url) for c, url in (("api", settings.database_url_api), ("chat", settings.database_url_chat),
                                            ("stream", settings.database_url_stream)) if url}
    for flag in flags:
        component, _, role = flag.partition("=")
        if component not in COMPONENTS or not role:
            raise ValueError(f"--grant {flag!r}: expected COMPONENT=ROLE with COMPONENT one of {', '.join(COMPONENTS)}")
        roles[component] = role
    return roles


async def grant_roles(database_url: str, roles: dict[str, str]) -> None:
    """Grant each component's role what it needs (nothing when `roles` is empty)."""
    if not roles:
        return
    conn = await asyncpg.connect(database_url)
    try:
        await grant(conn, roles)
    finally:
        await conn.close()
    log.info("grants applied", extra={"roles": roles})


async def migrate_and_grant(database_url: str, roles: dict[str, str], analytics_url: str = "") -> list[str]:
    applied = await migrate(database_url)
    await grant_roles(database_url, roles)
    store = analytics_url or database_url
    applied += [f"analytics/{version}" for version in await analytics.migrate_store(store)]
    if "api" in roles:
        await analytics.grant_store(store, roles["api"])
    return applied


def run(args: argparse.Namespace) -> int:
    settings = MigrateSettings.from_env()  # the environment, read once: VEZA_DATABASE_URL, VEZA_LOG_LEVEL, ...
    configure_logging("migrate", settings.log_level)
    # The flag wins, even when given empty (then there is no URL).
    database_url = settings.database_url if args.database_url is None else args.database_url
    if not database_url:
        print("veza migrate: no database URL (--database-url or VEZA_DATABASE_URL)", file=sys.stderr)
        return 2
    try:
        roles = roles_to_grant(settings, args.grant)
    except ValueError as exc:
        print(f"veza migrate: {exc}", file=sys.stderr)
        return 2
    try:
        applied = asyncio.run(asyncio.wait_for(
            migrate_and_grant(database_url, roles, settings.analytics_database_url), args.timeout))
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        log.error("migration failed", extra={"error": repr(exc)})
        return 1
    print(json.dumps({"applied": applied}))
    return 0
