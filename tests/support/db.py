"""Databases of their own for tests, on the session's PostgreSQL (one server, many databases)."""

from __future__ import annotations

import uuid

import asyncpg

from veza_core.db import migrate
from veza_local.services import PostgresService


async def fresh_database(postgres: PostgresService, prefix: str, *, migrated: bool = True) -> str:
    """The URL of a new, empty database `<prefix>_<random>`; with every migration applied unless told not."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(postgres.url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = postgres.url.rsplit("/", 1)[0] + f"/{name}"
    if migrated:
        await migrate(url)
    return url
