"""Who may enter the room: a bearer token checked and turned into a principal and a room role.

The same decision serves the WebSocket handshake and the REST endpoints, so a refused socket and
a refused history request get the same status and stable code (401 for the token itself, 403
for a token that is fine but not for this room or this user).
"""

from __future__ import annotations

from collections.abc import Callable

from veza_core.auth import Principal, TokenError, TokenVerifier
from veza_core.web import HttpError

from . import protocol as p
from .spec import RoomSpec


def authorize(token: str | None, verifier: TokenVerifier, room: str, spec: RoomSpec, *,
              banned: Callable[[str], bool]) -> tuple[Principal, str]:
    """(principal, room role) or an HttpError with a stable code."""
    if token is None:
        raise HttpError(401, "token_missing", "a bearer token is required")
    try:
        principal = verifier.verify(token)
    except TokenError as exc:
        raise HttpError(401, exc.code, exc.message) from None
    if not token_allows_room(principal, room):
        raise HttpError(403, "token_room", "the token is for another room")
    if banned(principal.subject) and not principal.is_admin:  # nobody in a room outranks an admin
        raise HttpError(403, p.BANNED, "you are banned from this room")
    role = room_role(principal, room, spec)
    if role is None:
        raise HttpError(403, p.NOT_MEMBER, "this room is private")
    return principal, role


RANKS = ("member", "moderator", "owner", "admin")


def rank(role: str | None) -> int:
    """A role's rank in a room (a stranger and a plain member rank lowest)."""
    return RANKS.index(role) if role in RANKS else 0


def token_allows_room(principal: Principal, room: str) -> bool:
    """A token may be scoped to some rooms (claim `rooms`, or `room`); an unscoped one fits every room."""
    scoped = principal.claims.get("rooms", principal.claims.get("room"))
    if scoped is None:
        return True
    rooms = [scoped] if isinstance(scoped, str) else scoped
    return isinstance(rooms, list) and room in rooms


def room_role(principal: Principal, room: str, spec: RoomSpec) -> str | None:
    """admin, a role granted by the token or the spec's member list, else member of a public room;
    None for a stranger to a private room."""
    role = ("admin" if principal.is_admin else None) or principal.resource_role("room", room) \
        or spec.member_role(principal.subject)
    if role is None and spec.visibility == "public":
        return "member"
    return role
