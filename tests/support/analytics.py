"""A filled analytics store for the tests of what reads it (the admin routes, the Grafana dashboard, the web page):
known rows on two days, written with SQL as the consumer would have left them."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import asyncpg

from veza_api.services.analytics import migrate_store


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), UTC)


async def apply_schema(url: str) -> None:
    """The analytics schema, as `veza migrate` applies it."""
    await migrate_store(url)


async def seed(url: str, day: date) -> None:
    """Rows on `day` and the day after (rooms general and lobby, channels radio and jazz); idempotent."""
    nxt = day + timedelta(days=1)
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.executemany(
                "INSERT INTO analytics.room_messages_hourly (room, hour, messages) VALUES ($1, $2, $3)"
                " ON CONFLICT (room, hour) DO UPDATE SET messages = excluded.messages",
                [("general", at(day, 9), 12), ("general", at(day, 10), 30), ("lobby", at(day, 10), 5),
                 ("general", at(nxt, 0), 7)])
            await conn.executemany(
                "INSERT INTO analytics.active_users_daily (day, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                [(day, "u1"), (day, "u2"), (day, "u3"), (nxt, "u1")])
            await conn.executemany(
                "INSERT INTO analytics.listener_seconds_hourly (channel, rendition, hour, seconds)"
                " VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (channel, rendition, hour) DO UPDATE SET seconds = excluded.seconds",
                [("radio", "mp3-128", at(day, 10), 1800.0), ("radio", "opus-64", at(day, 10), 600.0),
                 ("jazz", "mp3-128", at(day, 11), 3600.0), ("radio", "mp3-128", at(nxt, 1), 90.0)])
            await conn.executemany(
                "INSERT INTO analytics.daily_peaks (kind, scope, day, peak, at) VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT (kind, scope, day) DO UPDATE SET peak = excluded.peak, at = excluded.at",
                [("listeners", "radio", day, 42, at(day, 10, 15)), ("connections", "general", day, 17, at(day, 10, 5)),
                 ("listeners", "radio", nxt, 3, at(nxt, 1, 30))])
            await conn.executemany(
                "INSERT INTO analytics.track_plays (channel, title, track_id, plays, last_played)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (channel, title) DO UPDATE"
                " SET track_id = excluded.track_id, plays = excluded.plays, last_played = excluded.last_played",
                [("radio", "Tone A", "t-a", 9, at(day, 10, 30)), ("radio", "Tone B", None, 4, at(day, 11)),
                 ("jazz", "Blue", "t-b", 6, at(day, 11, 30))])
    finally:
        await conn.close()
