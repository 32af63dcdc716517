"""The restore drill: history written by real chat workers, `veza backup` to a real S3 endpoint, the database
dropped, `veza restore` into a new one, and every room's history, sequence numbers and reactions are what
they were; the rooms' workers resume their clients and continue each sequence without a gap."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import boto3

from tests.support.api import write_keys
from tests.support.chat import ISSUER, Chat
from tests.support.db import fresh_database
from veza_core.auth import TokenIssuer
from veza_core.keys import KeySet, generate_signing_key
from veza_local.services import NatsService, PostgresService, RedisService, S3Service

BUCKET = "veza-backup-tests"


def _bucket(s3: S3Service) -> None:
    client = boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1", aws_access_key_id=s3.access_key,
                          aws_secret_access_key=s3.secret_key)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)


def veza(command: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "veza_cli.main", command, *args], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


async def _history(url: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(url)
    try:
        events = await conn.fetch("SELECT room, seq, kind, id::text, author, body, target, created_at, edited_at"
                                  " FROM chat_events ORDER BY room, seq")
        rooms = await conn.fetch("SELECT room, last_seq FROM chat_rooms ORDER BY room")
        reactions = await conn.fetch("SELECT * FROM chat_reactions ORDER BY 1, 2, 3")
        return [tuple(r) for r in (*events, *rooms, *reactions)]
    finally:
        await conn.close()


async def _recreate(postgres: PostgresService, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(postgres.url)
    try:
        await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def test_history_survives_backup_drop_and_restore(postgres: PostgresService, nats: NatsService,
                                                        redis: RedisService, s3: S3Service, tmp_path: Path) -> None:
    _bucket(s3)
    database = await fresh_database(postgres, "drill")
    key = generate_signing_key()
    write_keys(tmp_path / "jwt", [key])
    issuer = TokenIssuer(KeySet.from_private_keys([key]), issuer=ISSUER)
    services = {"VEZA_DATABASE_URL": database, "VEZA_NATS_URL": nats.url, "VEZA_REDIS_URL": redis.url}
    rooms = [Chat(tmp_path, tmp_path / "jwt", issuer, services) for _ in range(2)]
    last: dict[str, int] = {}
    try:
        for n, chat in enumerate(rooms):
            worker = await chat.worker()
            alice = await chat.connect(worker, "alice")
            for i in range(5 + n):
                await alice.send({"type": "send", "cid": f"m{i}", "text": f"{chat.room} message {i}"})
                last[chat.room] = (await alice.expect("ack", cid=f"m{i}"))["seq"]
            await alice.send({"type": "edit", "cid": "e1", "seq": 1, "text": "edited"})
            await alice.send({"type": "react", "cid": "r1", "seq": 2, "emoji": "👍"})
            await alice.expect("ack", cid="e1")
            last[chat.room] = (await alice.expect("ack", cid="r1"))["seq"]
            await chat.close()
        before = await _history(database)
        assert len(before) > 14

        env = {"PATH": "/usr/bin:/bin", "VEZA_DATABASE_URL": database, "VEZA_PLATFORM": f"drill{uuid.uuid4().hex[:6]}",
               "VEZA_S3_ENDPOINT": s3.url, "VEZA_S3_BUCKET": BUCKET, "AWS_ACCESS_KEY_ID": s3.access_key,
               "AWS_SECRET_ACCESS_KEY": s3.secret_key}
        made = veza("backup", env)
        assert made.returncode == 0, made.stderr
        backup = json.loads(made.stdout.strip().splitlines()[-1])
        assert backup["backup"].startswith(f"backups/{env['VEZA_PLATFORM']}/") and backup["bytes"] > 0

        refused = veza("restore", env)  # the database still holds the schema: no silent overwrite
        assert refused.returncode == 1 and "already holds" in refused.stderr, refused.stderr

        await _recreate(postgres, database)
        restored = veza("restore", env)
        assert restored.returncode == 0, restored.stderr
        assert json.loads(restored.stdout.strip().splitlines()[-1])["restored"] == backup["backup"]
        assert await _history(database) == before

        # The rooms go on: a client resumes after its last seen seq, the next send takes the next seq.
        for chat in rooms:
            worker = await chat.worker()
            bob = await chat.connect(worker, "bob", after=last[chat.room] - 1)
            assert (await bob.expect("event"))["seq"] == last[chat.room]
            await bob.send({"type": "send", "cid": "after-restore", "text": "still here"})
            assert (await bob.expect("ack", cid="after-restore"))["seq"] == last[chat.room] + 1
    finally:
        for chat in rooms:
            await chat.close()


def test_restore_without_a_backup_says_so(s3: S3Service, postgres: PostgresService) -> None:
    env = {"PATH": "/usr/bin:/bin", "VEZA_DATABASE_URL": postgres.url, "VEZA_PLATFORM": "nobackups",
           "VEZA_S3_ENDPOINT": s3.url, "VEZA_S3_BUCKET": BUCKET, "AWS_ACCESS_KEY_ID": s3.access_key,
           "AWS_SECRET_ACCESS_KEY": s3.secret_key}
    _bucket(s3)
    done = veza("restore", env)
    assert done.returncode == 1 and "no backup under" in done.stderr, done.stderr
    missing_url = veza("backup", {k: v for k, v in env.items() if k != "VEZA_DATABASE_URL"})
    assert missing_url.returncode == 2 and "no database URL" in missing_url.stderr
