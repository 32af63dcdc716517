"""Routes of the analytics figures (admins): GET /api/v1/admin/analytics/{messages,active-users,listening,peaks,
top-tracks}, over `services.analytics_queries`. Each takes an optional `from`/`to` (ISO dates or datetimes, UTC
unless they say otherwise; default the last 7 days)."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from veza_core.web import HttpError, json_response

from .context import API
from .rbac import require_admin
from .services import analytics_queries as queries
from .services.roles import NAME_RE

MAX_TRACKS = 100


def _invalid(message: str) -> HttpError:
    return HttpError(400, "invalid_query", message)


async def _store(request: web.Request) -> tuple[asyncpg.Pool, queries.Window]:
    """The analytics store's pool and the request's window, once the caller is known to be an admin."""
    await require_admin(request)
    try:
        span = queries.window(request.query.get("from"), request.query.get("to"))
    except ValueError as exc:
        raise _invalid(f"from/to: {exc}") from exc
    pool = request.app[API].analytics_pool
    if pool is None:
        raise HttpError(503, "analytics_unavailable", "the analytics store is not available")
    return pool, span


def _name(request: web.Request, parameter: str) -> str | None:
    """A room or channel filter: a resource name, or None when not given."""
    value = request.query.get(parameter)
    if value is not None and not NAME_RE.fullmatch(value):
        raise _invalid(f"{parameter} must be a room or channel name")
    return value


async def messages(request: web.Request) -> web.Response:
    """GET /api/v1/admin/analytics/messages?room=&from=&to= (messages per room per hour)."""
    pool, span = await _store(request)
    return json_response({"series": await queries.room_messages(pool, span, _name(request, "room"))})


async def active_users(request: web.Request) -> web.Response:
    """GET /api/v1/admin/analytics/active-users?from=&to= (users who wrote, per day)."""
    pool, span = await _store(request)
    return json_response({"days": await queries.active_users(pool, span)})


async def listening(request: web.Request) -> web.Response:
    """GET /api/v1/admin/analytics/listening?channel=&from=&to= (listener-minutes per channel, rendition, hour)."""
    pool, span = await _store(request)
    return json_response({"series": await queries.listening(pool, span, _name(request, "channel"))})


async def peaks(request: web.Request) -> web.Response:
    """GET /api/v1/admin/analytics/peaks?kind=listeners|connections&from=&to= (daily peaks)."""
    pool, span = await _store(request)
    kind = request.query.get("kind")
    if kind is not None and kind not in queries.PEAK_KINDS:
        raise _invalid(f"kind must be one of {', '.join(queries.PEAK_KINDS)}")
    return json_response({"peaks": await queries.peaks(pool, span, kind)})


async def top_tracks(request: web.Request) -> web.Response:
    """GET /api/v1/admin/analytics/top-tracks?channel=&limit=10&from=&to= (most played tracks)."""
    pool, span = await _store(request)
    try:
        limit = int(request.query.get("limit", "10"))
    except ValueError as exc:
        raise _invalid("limit must be an integer") from exc
    if not 1 <= limit <= MAX_TRACKS:
        raise _invalid(f"limit must be between 1 and {MAX_TRACKS}")
    tracks = await queries.top_tracks(pool, span, _name(request, "channel"), limit)
    return json_response({"tracks": tracks})
