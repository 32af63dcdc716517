"""Reading the analytics store (schema `analytics`, docs/analytics.md): the figures the admin routes serve.

Every time is UTC. A window is half-open, [start, end): an hourly or daily row is in it when its hour or
day overlaps it. The rows are written by the analytics consumer (`services.analytics`); this module only reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import asyncpg

DEFAULT_DAYS = 7
MAX_DAYS = 366  # one query never scans more than a year of hourly rows
PEAK_KINDS = ("listeners", "connections")


@dataclass(frozen=True)
class Window:
    """[start, end) in UTC."""

    start: datetime
    end: datetime

    @property
    def first_hour(self) -> datetime:
        return self.start.replace(minute=0, second=0, microsecond=0)

    @property
    def first_day(self) -> date:
        return self.start.date()

    @property
    def end_day(self) -> date:
        """The first day not in the window (the end's day itself when the end is a midnight)."""
        day = self.end.date()
        return day if self.end.timetz() == time(0, tzinfo=UTC) else day + timedelta(days=1)


def parse_time(value: str, *, end: bool) -> datetime:
    """An ISO date or datetime; a date is its midnight (UTC), or, as the end, the next one (the day is in);
    a datetime without an offset is UTC. ValueError otherwise."""
    if "T" not in value and " " not in value:
        day = date.fromisoformat(value)
        return datetime.combine(day + timedelta(days=1) if end else day, time(0), UTC)
    moment = datetime.fromisoformat(value)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def window(start: str | None, end: str | None, *, now: datetime | None = None) -> Window:
    """The window of `from`/`to` (either may be missing: the end defaults to now, the start to DEFAULT_DAYS before
    the end). ValueError when a value is not ISO, the start is not before the end, or it spans over MAX_DAYS."""
    stop = parse_time(end, end=True) if end else (now or datetime.now(UTC))
    begin = parse_time(start, end=False) if start else stop - timedelta(days=DEFAULT_DAYS)
    if begin >= stop:
        raise ValueError("from must be before to")
    if stop - begin > timedelta(days=MAX_DAYS):
        raise ValueError(f"the window spans more than {MAX_DAYS} days")
    return Window(begin, stop)


def _iso(value: datetime | date) -> str:
    return value.isoformat()


async def room_messages(db: asyncpg.Pool, span: Window, room: str | None = None) -> list[dict[str, Any]]:
    """Messages per room and hour, oldest first."""
    rows = await db.fetch(
        "SELECT room, hour, messages FROM analytics.room_messages_hourly"
        " WHERE hour >= $1 AND hour < $2 AND ($3::text IS NULL OR room = $3) ORDER BY hour, room",
        span.first_hour, span.end, room)
    return [{"room": r["room"], "hour": _iso(r["hour"]), "messages": r["messages"]} for r in rows]


async def active_users(db: asyncpg.Pool, span: Window) -> list[dict[str, Any]]:
    """Distinct users who sent a message, per day (days nobody wrote are absent), oldest first."""
    rows = await db.fetch(
        "SELECT day, count(*) AS users FROM analytics.active_users_daily"
        " WHERE day >= $1 AND day < $2 GROUP BY day ORDER BY day",
        span.first_day, span.end_day)
    return [{"day": _iso(r["day"]), "users": r["users"]} for r in rows]


async def listening(db: asyncpg.Pool, span: Window, channel: str | None = None) -> list[dict[str, Any]]:
    """Listener-minutes per channel, rendition and hour, oldest first."""
    rows = await db.fetch(
        "SELECT channel, rendition, hour, seconds FROM analytics.listener_seconds_hourly"
        " WHERE hour >= $1 AND hour < $2 AND ($3::text IS NULL OR channel = $3) ORDER BY hour, channel, rendition",
        span.first_hour, span.end, channel)
    return [{"channel": r["channel"], "rendition": r["rendition"], "hour": _iso(r["hour"]),
             "minutes": round(r["seconds"] / 60, 2)} for r in rows]


async def peaks(db: asyncpg.Pool, span: Window, kind: str | None = None) -> list[dict[str, Any]]:
    """The day's peak of concurrent listeners per channel or connections per room, oldest first."""
    rows = await db.fetch(
        "SELECT kind, scope, day, peak, at FROM analytics.daily_peaks"
        " WHERE day >= $1 AND day < $2 AND ($3::text IS NULL OR kind = $3) ORDER BY day, kind, scope",
        span.first_day, span.end_day, kind)
    return [{"kind": r["kind"], "scope": r["scope"], "day": _iso(r["day"]), "peak": r["peak"],
             "at": _iso(r["at"])} for r in rows]


async def top_tracks(db: asyncpg.Pool, span: Window, channel: str | None = None,
                     limit: int = 10) -> list[dict[str, Any]]:
    """The most played tracks among those last played in the window (plays count since the store began: it keeps
    one total per track), most played first."""
    rows = await db.fetch(
        "SELECT channel, title, track_id, plays, last_played FROM analytics.track_plays"
        " WHERE last_played >= $1 AND last_played < $2 AND ($3::text IS NULL OR channel = $3)"
        " ORDER BY plays DESC, last_played DESC, channel, title LIMIT $4",
        span.start, span.end, channel, limit)
    return [{"channel": r["channel"], "title": r["title"], "track_id": r["track_id"], "plays": r["plays"],
             "last_played": _iso(r["last_played"])} for r in rows]
