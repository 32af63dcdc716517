"""Access tokens: verification (every worker) and issuance (the API).

Tokens are JWTs signed with the platform's keys (see :mod:`veza_core.keys`).
Verification pins everything an attacker could otherwise choose: the algorithm
must be one we allow *and* the one the key was made for (no ``none``, no
HS256-with-a-public-key confusion), and ``iss``, ``aud``, ``exp``, ``iat`` and
``sub`` are required.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web

from .keys import KeySet

# Audiences: one per service, so a token for one cannot be replayed at another.
AUDIENCE_API = "veza-api"
AUDIENCE_CHAT = "veza-chat"
AUDIENCE_STREAM = "veza-stream"

# WebSocket clients cannot set headers in browsers: the token travels as a
# subprotocol "bearer.<jwt>" next to the protocol name.
BEARER_SUBPROTOCOL_PREFIX = "bearer."


class TokenError(Exception):
    """A token was missing or rejected; `code` is stable and safe to show clients."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for."""

    subject: str
    name: str
    roles: frozenset[str] = frozenset()
    claims: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def resource_role(self, kind: str, name: str) -> str | None:
        """Role granted by the token on one room or channel (claim `res`: {"room/general": "moderator"})."""
        value = (self.claims.get("res") or {}).get(f"{kind}/{name}")
        return str(value) if value else None


class TokenVerifier:
    """Verifies access tokens; remembers the tokens it verified until they expire.

    An Ed25519 signature check costs ~400 µs here, and a client sends the same token with every request until
    it expires, so each verified token is kept (at most `cache_size`, least recently used first out) with the
    key object that verified it: a hit costs a dictionary lookup and two comparisons. A kept token stops being
    accepted the moment it expires, or its key leaves the key set or is replaced (a rotation's overlap ends:
    the files change and the key set reloads). Revocation is not the verifier's business: callers check the
    token's session on every request, cached or not (the API's middleware, the chat worker's revocation list).
    """

    def __init__(self, keys: KeySet, *, issuer: str, audience: str,
                 algorithms: tuple[str, ...] = ("EdDSA", "RS256"), leeway: float = 5.0, cache_size: int = 4096) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.algorithms = tuple(a for a in algorithms if a not in ("none", "HS256", "HS384", "HS512"))
        self.leeway = leeway
        self.cache_size = cache_size
        # token -> (principal, key id, the key object that verified it, expiry)
        self._verified: OrderedDict[str, tuple[Principal, str, jwt.PyJWK, float]] = OrderedDict()

    def verify(self, token: str) -> Principal:
        kept = self._verified.get(token)
        if kept is not None:
            principal, kid, key, exp = kept
            if time.time() < exp + self.leeway and self.keys.public_key(kid) is key:
                self._verified.move_to_end(token)
                return principal
            del self._verified[token]
        principal, kid, key = self._verify(token)
        if self.cache_size > 0:
            self._verified[token] = (principal, kid, key, float(principal.claims["exp"]))
            if len(self._verified) > self.cache_size:
                self._verified.popitem(last=False)
        return principal

    def _verify(self, token: str) -> tuple[Principal, str, jwt.PyJWK]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError("token_malformed", "the token is not a JWT") from exc
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self.algorithms:
            raise TokenError("token_algorithm", f"algorithm {alg!r} is not accepted")
        if not isinstance(kid, str):
            raise TokenError("token_key", "the token names no key id")
        key = self.keys.public_key(kid)
        if key is None:
            raise TokenError("token_key", "the token's key is unknown")
        if key.algorithm_name != alg:
            raise TokenError("token_algorithm", "the token's algorithm does not match its key")
        try:
            claims = jwt.decode(
                token, key.key, algorithms=[alg], audience=self.audience, issuer=self.issuer,
                leeway=self.leeway, options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenError("token_expired", "the token has expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenError("token_audience", "the token is not meant for this service") from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenError("token_issuer", "the token comes from another issuer") from exc
        except jwt.PyJWTError as exc:
            raise TokenError("token_invalid", f"the token is invalid: {exc}") from exc
        principal = Principal(subject=str(claims["sub"]), name=str(claims.get("name") or claims["sub"]),
                              roles=frozenset(claims.get("roles") or ()), claims=claims)
        return principal, kid, key


class TokenIssuer:
    """Signs access tokens with the active key of the platform's key set."""

    def __init__(self, keys: KeySet, *, issuer: str) -> None:
        self.keys = keys
        self.issuer = issuer

    def issue(self, subject: str, *, audience: str | list[str], ttl: float = 900, name: str | None = None,
              roles: list[str] | None = None, **claims: Any) -> str:
        kid, key = self.keys.active_signing_key()
        now = int(time.time())
        payload = {"iss": self.issuer, "sub": subject, "aud": audience, "iat": now, "nbf": now,
                   "exp": now + int(ttl), "jti": secrets.token_urlsafe(12), **claims}
        if name is not None:
            payload["name"] = name
        if roles:
            payload["roles"] = roles
        return jwt.encode(payload, key.key, algorithm=key.algorithm_name, headers={"kid": kid})


def token_from_request(request: web.Request) -> str | None:
    """The bearer token of an HTTP request or WebSocket handshake (header, then subprotocol)."""
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    for proto in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
        proto = proto.strip()
        if proto.startswith(BEARER_SUBPROTOCOL_PREFIX):
            return proto[len(BEARER_SUBPROTOCOL_PREFIX):] or None
    return None
