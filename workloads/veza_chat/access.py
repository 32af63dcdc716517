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
from .revocations import Revocations
from .spec import RoomSpec


def authorize(token: str | None, verifier: TokenVerifier, room: str, spec: RoomSpec, *,
              banned: Callable[[str], bool], revocations: Revocations | None = None) -> tuple[Principal, str]:
    """(principal, room role) or an HttpError with a stable code. `revocations`: what the API said since the
    token was issued (a revoked session, a changed role), which wins over the token."""
    principal = authenticate(token, verifier, room, revocations)
    if banned(principal.subject) and not principal.is_admin:  # nobody in a room outranks an admin
        raise HttpError(403, p.BANNED, "you are banned from this room")
    role = room_role(principal, room, spec,
                     revocations.role_override(principal) if revocations is not None else (False, None))
    if role is None:
        raise HttpError(403, p.NOT_MEMBER, "this room is private")
    return principal, role


def authenticate(token: str | None, verifier: TokenVerifier, room: str,
                 revocations: Revocations | None = None) -> Principal:
    """What can be said of a token without the room's spec: valid, not revoked, not scoped to other rooms (a pool
    worker asks this before it opens a room for a request)."""
    if token is None:
        raise HttpError(401, "token_missing", "a bearer token is required")
    try:
        principal = verifier.verify(token)
    except TokenError as exc:
        raise HttpError(401, exc.code, exc.message) from None
    if revocations is not None and revocations.revoked(principal):
        raise HttpError(401, p.SESSION_REVOKED, "the session of this token has ended: sign in again")
    if not token_allows_room(principal, room):
        raise HttpError(403, "token_room", "the token is for another room")
    return principal


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


def room_role(principal: Principal, room: str, spec: RoomSpec,
              override: tuple[bool, str | None] = (False, None)) -> str | None:
    """admin, a role granted by the token (or, `override` = (True, role), by the API since the token was
    issued) or the spec's member list, else member of a public room; None for a stranger to a private room."""
    changed, granted = override
    role = ("admin" if principal.is_admin else None) or (granted if changed else principal.resource_role("room", room))
    return role or default_role(principal.subject, spec)


def default_role(user: str, spec: RoomSpec) -> str | None:
    """The role of a user whom no token or API grant gives one: the spec's member list, else member of a public
    room; None for a stranger to a private room."""
    return spec.member_role(user) or ("member" if spec.visibility == "public" else None)
