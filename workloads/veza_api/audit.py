"""Route of the audit log: admins page through it, newest first (see `services.audit`)."""

from __future__ import annotations

from aiohttp import web

from veza_core.web import HttpError, json_response

from .context import API
from .errors import parse_uuid
from .rbac import require_admin
from .services import audit


async def list_audit(request: web.Request) -> web.Response:
    """GET /api/v1/admin/audit?event=&actor=&subject=&before=&limit= (newest first, keyset pages)."""
    await require_admin(request)
    q = request.query
    try:
        limit = min(max(int(q.get("limit", "50")), 1), 500)
        before = int(q["before"]) if "before" in q else None
    except ValueError as exc:
        raise HttpError(400, "invalid_query", "limit and before must be integers") from exc
    actor = parse_uuid(q["actor"], "actor") if "actor" in q else None
    entries = await audit.entries(request.app[API].lists, limit=limit, event=q.get("event"),
                                  subject=q.get("subject"), actor=actor, before=before)
    next_before = entries[-1]["id"] if len(entries) == limit else None
    return json_response({"entries": entries, "next_before": next_before})
