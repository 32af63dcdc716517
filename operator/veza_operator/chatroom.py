"""ChatRoom: a chat worker Deployment per room, routed at /chat/<room> on the platform's host.

Autoscaling scales on `veza_chat_connections` (the connections each pod holds),
through an HPA that targets the ChatRoom's scale subresource.
"""

from __future__ import annotations

from .controller import Context, Key
from .models import ChatRoomSpec
from .workers import WorkerKind, reconcile

CHAT_ROOM = WorkerKind(kind="ChatRoom", component="chat", spec_model=ChatRoomSpec, path_prefix="/chat",
                       load_metric="veza_chat_connections")


async def reconcile_chat_room(ctx: Context, key: Key) -> None:
    await reconcile(CHAT_ROOM, ctx, key)
