"""The audit log: security-relevant events, stored in PostgreSQL, queried by admins.

Event names are dotted and stable (docs/api.md lists them): login.success,
login.failure, token.refresh, token.reuse, session.logout, role.granted,
role.revoked, user.updated, room.moderation, key.rotated, ...
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web

from veza_core.logs import request_id

from .context import api, client_ip
from .errors import ApiError, parse_uuid
from .rbac import require_admin

log = logging.getLogger("veza.audit")


async def record(db: asyncpg.Pool | asyncpg.Connection, event: str, *, actor: str | None = None,
                 subject: str | None = None, request: web.Request | None = None, **details: Any) -> None:
    ip = client_ip(request) if request is not None else None
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


async def list_audit(request: web.Request) -> web.Response:
    """GET /api/v1/admin/audit?event=&actor=&subject=&before=&limit= (newest first, keyset pages)."""
    await require_admin(request)
    q = request.query
    try:
        limit = min(max(int(q.get("limit", "50")), 1), 500)
        before = int(q["before"]) if "before" in q else None
    except ValueError as exc:
        raise ApiError(400, "invalid_query", "limit and before must be integers") from exc
    conditions: list[str] = []
    args: list[object] = []
    for column, value in (("event", q.get("event")), ("subject", q.get("subject"))):
        if value is not None:
            args.append(value)
            conditions.append(f"{column} = ${len(args)}")
    if "actor" in q:
        args.append(parse_uuid(q["actor"], "actor"))
        conditions.append(f"actor_id = ${len(args)}")
    if before is not None:
        args.append(before)
        conditions.append(f"id < ${len(args)}")
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    args.append(limit)
    rows = await api(request).pool.fetch(
        f"SELECT * FROM audit_log {where} ORDER BY id DESC LIMIT ${len(args)}", *args)  # noqa: S608 - fixed columns
    entries = [_entry(r) for r in rows]
    next_before = entries[-1]["id"] if len(entries) == limit else None
    return web.json_response({"entries": entries, "next_before": next_before})
