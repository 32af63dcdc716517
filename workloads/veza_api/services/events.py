"""What the API tells the chat and stream workers over NATS, so open WebSockets follow logouts,
disabled accounts and room role changes (the workers re-check or close them):

- ``veza.<platform>.user.<user>.revoked``: ``{"v": 1, "user", "session" (null: every session of the
  user), "reason": "logout" | "reused" | "disabled" | "email_verified"}``;
- ``veza.<platform>.room.<room>.membership``: ``{"v": 1, "room", "user", "role" (null: removed or
  banned)}``.

Published after the change is committed in PostgreSQL, best effort (`veza_api.bus`).
"""

from __future__ import annotations

import uuid

from veza_core.bus import subject

from ..context import Api


async def session_revoked(ctx: Api, user: uuid.UUID | str, session: uuid.UUID | None, reason: str) -> None:
    await ctx.publisher.publish(
        subject(ctx.settings.platform, "user", str(user), "revoked"), "revoked",
        {"v": 1, "user": str(user), "session": str(session) if session else None, "reason": reason})


async def membership_changed(ctx: Api, room: str, user: uuid.UUID | str, role: str | None) -> None:
    await ctx.publisher.publish(
        subject(ctx.settings.platform, "room", room, "membership"), "membership",
        {"v": 1, "room": room, "user": str(user), "role": role})
