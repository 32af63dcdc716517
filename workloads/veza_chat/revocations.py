"""What the API said about sessions and room roles since this replica started, for the tokens issued before.

A token is checked once, at the handshake; the API's word comes later over NATS (inbound.py). Open
sockets it concerns are closed by the service; this keeps the word so that a token issued before it
cannot open a new socket: a revoked session (`sid` claim), every session of a user revoked at a time
(tokens issued up to then), a role on the room changed at a time (tokens issued up to then carry a
role the API has since changed: the newer word wins). Entries are kept for `memory` seconds (longer
than the API's service tokens live) and at most `limit` of each kind.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from veza_core.auth import Principal

V = TypeVar("V")


class _Recent(Generic[V]):
    """A bounded map of the most recent entries, each forgotten `memory` seconds after it was set."""

    def __init__(self, memory: float, limit: int, clock: Callable[[], float]) -> None:
        self.memory, self.limit, self.clock = memory, limit, clock
        self.entries: OrderedDict[str, tuple[float, V]] = OrderedDict()

    def set(self, key: str, value: V) -> None:
        self.entries.pop(key, None)
        self.entries[key] = (self.clock(), value)
        while len(self.entries) > self.limit:
            self.entries.popitem(last=False)

    def get(self, key: str) -> tuple[float, V] | None:
        entry = self.entries.get(key)
        if entry is not None and self.clock() - entry[0] > self.memory:
            del self.entries[key]
            return None
        return entry


class Revocations:
    def __init__(self, *, memory: float = 3600.0, limit: int = 100_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.sessions: _Recent[None] = _Recent(memory, limit, clock)
        self.users: _Recent[None] = _Recent(memory, limit, clock)
        self.roles: _Recent[str | None] = _Recent(memory, limit, clock)

    def revoke(self, user: str, session: str | None) -> None:
        if session is None:
            self.users.set(user, None)
        else:
            self.sessions.set(session, None)

    def set_role(self, user: str, role: str | None) -> None:
        self.roles.set(user, role)

    def revoked(self, principal: Principal) -> bool:
        """The token belongs to a revoked session, or was issued before every session of its user was."""
        sid = principal.claims.get("sid")
        if isinstance(sid, str) and self.sessions.get(sid) is not None:
            return True
        return _issued_before(principal, self.users.get(principal.subject))

    def role_override(self, principal: Principal) -> tuple[bool, str | None]:
        """(True, role) when the API changed the user's role on the room after the token was issued."""
        entry = self.roles.get(principal.subject)
        if entry is not None and _issued_before(principal, entry):
            return True, entry[1]
        return False, None


def _issued_before(principal: Principal, entry: tuple[float, object] | None) -> bool:
    """`iat` has whole seconds: a token of the same second as the change counts as older (its holder asks
    again a second later)."""
    if entry is None:
        return False
    iat = principal.claims.get("iat")
    return not isinstance(iat, int | float) or iat <= math.floor(entry[0])
