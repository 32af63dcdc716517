"""The audit log: security-relevant events, stored in PostgreSQL, queried by admins.

Event names are dotted and stable (docs/api.md lists them): login.success,
login.failure, token.refresh, token.reuse, session.logout, role.granted,
role.revoked, user.updated, room.moderation, key.rotated, ...
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime
from typing import Any

import asyncpg

from veza_core.logs import request_id
from veza_core.replica import ReadRouter

log = logging.getLogger("veza.audit")


async def record(db: asyncpg.Pool | asyncpg.Connection, event: str, *, actor: str | None = None,
                 subject: str | None = None, ip: str | None = None, **details: Any) -> None:
    """One event; `ip` is the client's address when a request caused it (the request id comes along)."""
    await db.execute(
        "INSERT INTO audit_log (event, actor_id, subject, ip, request_id, details)"
        " VALUES ($1, $2::uuid, $3, $4, $5, $6::jsonb)",
        event, actor, subject, ip, request_id.get(), json.dumps(details, default=str))
    log.info("audit", extra={"event": event, "actor": actor, "subject": subject, "ip": ip})


def _entry(row: asyncpg.Record) -> dict[str, Any]:
    at: datetime = row["at"]
    return {"id": row["id"], "at": at.isoformat(), "event": row["event"],
            "actor_id": str(row["actor_id"]) if row["actor_id"] else None, "subject": row["subject"],
            "ip": row["ip"], "request_id": row["request_id"], "details": json.loads(row["details"])}


async def entries(db: asyncpg.Pool | ReadRouter, *, limit: int, event: str | None = None, subject: str | None = None,
                  actor: uuid.UUID | None = None, before: int | None = None) -> list[dict[str, Any]]:
    """Newest first, matching every filter given; `before` is the id to page back from."""
    conditions: list[str] = []
    args: list[object] = []
    for column, value in (("event", event), ("subject", subject), ("actor_id", actor), ("id", before)):
        if value is not None:
            args.append(value)
            conditions.append(f"{column} {'<' if column == 'id' else '='} ${len(args)}")
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    args.append(limit)
    rows = await db.fetch(
        f"SELECT * FROM audit_log {where} ORDER BY id DESC LIMIT ${len(args)}", *args)  # noqa: S608 - fixed columns
    return [_entry(r) for r in rows]
