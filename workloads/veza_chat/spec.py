"""The ChatRoom spec the operator passes in VEZA_RESOURCE_SPEC, under the names this package uses.

The model is the shared one (`veza_core.specs`, which the operator and the CRD use too): attributes
snake_case, JSON names camelCase as in the CRD.
"""

from __future__ import annotations

from veza_core.specs import ChatLimits as Limits
from veza_core.specs import ChatRoomWorkerSpec as RoomSpec
from veza_core.specs import Moderation as Moderation
from veza_core.specs import Retention as Retention
from veza_core.specs import RoomMember as Member

__all__ = ["Limits", "Member", "Moderation", "Retention", "RoomSpec"]
