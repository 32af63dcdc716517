"""Databases of their own for tests, on the session's PostgreSQL (one server, many databases)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg

from veza_core.db import migrate
from veza_local.services import PostgresService, _ensure_system_user, _open_path_for


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


class StandbyService(PostgresService):
    """A hot standby of `primary`: a base backup (`pg_basebackup -R`, which writes the standby's connection to the
    primary) started as its own server, streaming and replaying the primary's WAL. Read-only. The primary's
    defaults suffice: `wal_level = replica`, and initdb's pg_hba trusts replication from loopback."""

    name = "standby"

    def __init__(self, base_dir: Path, primary: PostgresService) -> None:
        super().__init__(base_dir, database=primary.database)
        self.primary = primary

    def prepare(self) -> None:
        if (self.data / "PG_VERSION").exists():  # a restart: the data (and its standby.signal) is kept
            super().prepare()
            return
        if self._as_root():
            _ensure_system_user(self.system_user)
            _open_path_for(self.dir)
            os.chown(self.dir, pwd.getpwnam(self.system_user).pw_uid, -1)
        subprocess.run(
            [str(self.bin / "pg_basebackup"), "-D", str(self.data), "-h", self.primary.host, "-p",
             str(self.primary.port), "-U", "postgres", "-X", "stream", "-R", "--checkpoint=fast", "--no-sync"],
            check=True, capture_output=True, **self.popen_kwargs())  # type: ignore[call-overload]

    async def replica_of(self, url: str, timeout: float = 15.0) -> str:
        """The URL of the database `url` names on the primary, here, once this standby has replayed its creation."""
        replica = self.url.rsplit("/", 1)[0] + "/" + url.rsplit("/", 1)[1]
        deadline = time.monotonic() + timeout
        while True:
            try:
                await (await asyncpg.connect(replica)).close()
                return replica
            except (OSError, asyncpg.PostgresError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def caught_up(self, timeout: float = 15.0) -> None:
        """Wait until this standby has replayed everything the primary had written when called."""
        primary = await asyncpg.connect(self.primary.url)
        try:
            target = await primary.fetchval("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn")
        finally:
            await primary.close()
        conn = await asyncpg.connect(self.url)
        try:
            deadline = time.monotonic() + timeout
            while await conn.fetchval("SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn") < target:
                if time.monotonic() > deadline:
                    raise TimeoutError("the standby did not catch up")
                await asyncio.sleep(0.05)
        finally:
            await conn.close()

    async def pause_replay(self) -> None:
        await self._call("SELECT pg_wal_replay_pause()")

    async def resume_replay(self) -> None:
        await self._call("SELECT pg_wal_replay_resume()")

    async def _call(self, sql: str) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()


@contextlib.contextmanager
def standby_of(primary: PostgresService, base_dir: Path) -> Iterator[StandbyService]:
    """A started standby of `primary`, stopped on exit."""
    standby = StandbyService(base_dir, primary)
    standby.start()
    try:
        yield standby
    finally:
        standby.stop()
