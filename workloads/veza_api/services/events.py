"""What the API tells the other workloads over NATS (the catalog: `veza_core.events`, docs/events.md):

- ``veza.<platform>.user.<user>.revoked``: sessions ended (`Revoked`), so chat sockets close;
- ``veza.<platform>.room.<room>.membership``: a user's role on a room changed (`Membership`);
- ``veza.<platform>.{room,channel}.<name>.lifecycle``: a room or channel created, updated or deleted in the
  directory (`RoomLifecycle`, `ChannelLifecycle`);
- ``veza.<platform>.room.<room>.moderation``: a moderation decision (`ModerationDecision`).

Published after the change is committed in PostgreSQL, best effort (`veza_api.bus`).
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from veza_core import events
from veza_core.events import Subject

from ..context import Api


async def _publish(ctx: Api, entry: Subject, name: str, model: type[BaseModel], **fields: Any) -> None:
    await ctx.publisher.publish_event(entry.subject(ctx.settings.platform, name), entry.event, model, v=1, **fields)


async def session_revoked(ctx: Api, user: uuid.UUID | str, session: uuid.UUID | None, reason: str) -> None:
    await _publish(ctx, events.USER_REVOKED, str(user), events.Revoked, user=str(user),
                   session=str(session) if session else None, reason=reason)


async def membership_changed(ctx: Api, room: str, user: uuid.UUID | str, role: str | None) -> None:
    await _publish(ctx, events.ROOM_MEMBERSHIP, room, events.Membership, room=room, user=str(user), role=role)


async def lifecycle(ctx: Api, kind: str, name: str,
                    action: Literal["created", "updated", "deleted"], title: str | None = None,
                    visibility: str | None = None) -> None:
    entry, model = ((events.ROOM_LIFECYCLE, events.RoomLifecycle) if kind == "room"
                    else (events.CHANNEL_LIFECYCLE, events.ChannelLifecycle))
    await _publish(ctx, entry, name, model, id=events.new_id(), action=action, title=title, visibility=visibility,
                   at=time.time(), **{kind: name})


async def moderation_decided(ctx: Api, room: str, decision: int, *, action: str, user: uuid.UUID, actor: str,
                             reason: str, until: datetime | None) -> None:
    await _publish(ctx, events.ROOM_MODERATION, room, events.ModerationDecision, id=f"{room}:{decision}", room=room,
                   action=action, user_id=str(user), actor=actor, reason=reason,
                   until=until.timestamp() if until else None, at=time.time())
