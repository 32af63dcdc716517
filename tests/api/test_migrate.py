"""`veza migrate`: the schema applies once, concurrent runs are safe, reruns are no-ops."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid

import asyncpg

from tests.support.db import fresh_database
from veza_core.db import migration_files
from veza_local.services import PostgresService


def _veza_migrate(url: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "veza_cli.main", "migrate", "--database-url", url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def test_two_concurrent_runs_apply_each_migration_once(postgres: PostgresService) -> None:
    url = await fresh_database(postgres, "mig", migrated=False)
    runs = [_veza_migrate(url) for _ in range(2)]
    outputs = [await asyncio.to_thread(p.communicate, timeout=120) for p in runs]
    assert [p.returncode for p in runs] == [0, 0], [err for _, err in outputs]
    applied = [json.loads(out.strip().splitlines()[-1])["applied"] for out, _ in outputs]
    ours = [v for v, _ in migration_files()]
    store = [f"analytics/{v}" for v, _ in migration_files("migrations/analytics")]  # the analytics store's, after
    # Each set is applied whole and in order by one run, while the other waits on the lock and then finds it done.
    # Which run takes which set is a race: the run that found the platform's set done may reach the store's lock
    # first.
    for wanted in (ours, store):
        assert sorted(([v for v in run if v in wanted] for run in applied), key=len) == [[], wanted], applied
    assert sorted(applied[0] + applied[1]) == sorted(ours + store), applied

    conn = await asyncpg.connect(url)
    try:
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
        assert versions == ours
        assert [r["version"] for r in await conn.fetch("SELECT version FROM analytics.schema_migrations")] == \
            [v.removeprefix("analytics/") for v in store]
        user = await conn.fetchrow(
            "INSERT INTO users (email, display_name, password_hash, roles) VALUES ('a@b.example', 'A', 'x', '{admin}')"
            " RETURNING id, roles, created_at, updated_at")
        assert isinstance(user["id"], uuid.UUID) and user["roles"] == ["admin"]
        try:
            await conn.execute("INSERT INTO users (email, display_name) VALUES ('A@b.example', 'B')")
            raise AssertionError("an uppercase email must be refused")
        except asyncpg.CheckViolationError:
            pass
    finally:
        await conn.close()

    again = _veza_migrate(url)
    out, err = await asyncio.to_thread(again.communicate, timeout=60)
    assert again.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == {"applied": []}


def test_missing_database_url_is_a_usage_error() -> None:
    done = subprocess.run([sys.executable, "-m", "veza_cli.main", "migrate", "--database-url", ""],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin"})
    assert done.returncode == 2 and "database URL" in done.stderr
