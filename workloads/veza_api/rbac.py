"""Who the caller is and what they may do, for handlers: the principal the auth
middleware found, and guards that answer 401/403/404 (the role data itself is
in `services.roles`).
"""

from __future__ import annotations

import functools
import uuid

from aiohttp import web

from veza_core.auth import Principal
from veza_core.web import HttpError

from .context import API
from .errors import forbidden, not_found
from .services.roles import NAME_RE, ROOM_ROLES, at_least, is_admin, room_role

REQUEST_PRINCIPAL = web.RequestKey("veza_principal", Principal)
# Set when the request carries the operator's directory credential (`ApiSettings.directory_token`): a caller
# that is not a user, accepted on DIRECTORY_ROUTES only.
REQUEST_OPERATOR = web.RequestKey("veza_operator", bool)
DIRECTORY_ROUTES = frozenset({*(f"/api/v1/admin/{plural}{tail}" for plural in ("rooms", "channels")
                                for tail in ("", "/{name}")), "/api/v1/admin/rooms/load"})
OPERATOR = "operator"  # the actor the audit log names for the directory credential


def principal(request: web.Request) -> Principal | None:
    """The caller when a valid API token came with the request (set by the auth middleware)."""
    return request.get(REQUEST_PRINCIPAL)


def require_user(request: web.Request) -> Principal:
    who = principal(request)
    if who is None:
        raise HttpError(401, "unauthenticated", "an access token is required",
                        headers={"WWW-Authenticate": 'Bearer realm="veza"'})
    return who


def user_id(who: Principal) -> uuid.UUID:
    return _parse_user_id(who.subject)


@functools.lru_cache(maxsize=4096)
def _parse_user_id(subject: str) -> uuid.UUID:
    """A busy client's every request names the same user: parsed once."""
    return uuid.UUID(subject)


async def is_platform_admin(request: web.Request, who: Principal) -> bool:
    return await is_admin(request.app[API].pool, user_id(who))


async def require_admin(request: web.Request) -> Principal:
    who = require_user(request)
    if not await is_platform_admin(request, who):
        raise forbidden("platform admins only")
    return who


async def require_directory_writer(request: web.Request) -> Principal | None:
    """A platform admin, or None for the operator (the directory credential): who may change the directory."""
    if request.get(REQUEST_OPERATOR):
        return None
    return await require_admin(request)


def resource_name(request: web.Request, kind: str = "room") -> str:
    name = request.match_info["name"]
    if not NAME_RE.fullmatch(name):
        raise not_found(kind)
    return name


async def require_room_role(request: web.Request, room: str, minimum: str) -> Principal:
    """The caller, if a platform admin or holding at least `minimum` in `room`."""
    who = require_user(request)
    db = request.app[API].pool
    if at_least(await room_role(db, room, user_id(who)), minimum, ROOM_ROLES) or await is_admin(db, user_id(who)):
        return who
    raise forbidden(f"room {minimum}s only")
