"""The sanctions in force in a room, where the chat workers enforce them.

Bans and mutes decided through the API are written to `chat_sanctions`, the one table chat
workers read (at boot and every few seconds) and write when a moderator acts over the
WebSocket; `room_moderation` stays the API's log of decisions. A worker closes the sockets of a
user it finds banned, and refuses every operation of a banned user.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg


async def apply(db: asyncpg.Connection, room: str, user: uuid.UUID, action: str, *, until: datetime | None,
                reason: str, by: uuid.UUID) -> None:
    """`ban`/`mute` put the sanction in force (until `until`, or for good); `unban`/`unmute` lift it."""
    if action in ("ban", "mute"):
        await db.execute(
            "INSERT INTO chat_sanctions (room, user_id, kind, until, reason, by_user) VALUES ($1, $2, $3, $4, $5, $6)"
            " ON CONFLICT (room, user_id, kind) DO UPDATE SET until = EXCLUDED.until, reason = EXCLUDED.reason,"
            " by_user = EXCLUDED.by_user, created_at = now()", room, str(user), action, until, reason, str(by))
    elif action in ("unban", "unmute"):
        await db.execute("DELETE FROM chat_sanctions WHERE room = $1 AND user_id = $2 AND kind = $3",
                         room, str(user), action.removeprefix("un"))
