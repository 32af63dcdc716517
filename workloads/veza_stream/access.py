"""Who may listen to a private channel and who may broadcast to a channel.

`Access` (under `ACCESS` on the app) holds what the checks need for this worker's channel; the
functions below do the checks and raise `AccessDenied`, an `HttpError` the shared middleware renders.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from aiohttp import web
from redis.asyncio import Redis

from veza_core.auth import Principal, TokenError, TokenVerifier, token_from_request
from veza_core.ratelimit import RateLimiter
from veza_core.web import HttpError, client_address

BROADCASTER = "broadcaster"
LISTENER_ROLES = frozenset({"listener", BROADCASTER})


class AccessDenied(HttpError):
    """A listener or broadcaster refused: 401, 403, 429 after too many wrong source passwords, or 503
    when tokens cannot be verified."""

    def __init__(self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, code, message, headers=headers)


# Wrong source passwords an address may try: 5 at once, then one a minute (a password of the
# platform's making is out of reach at that pace; a real source that mistyped waits a minute).
PASSWORD_FAILURES_BURST = 5.0
PASSWORD_FAILURES_RATE = 1 / 60
# The outcome of the broadcaster check, kept on the request: a source request is checked before
# `100 Continue` and again by its handler, and a wrong password must count once.
CHECKED = "veza.stream.broadcaster"


class Access:
    """The channel's gate: its visibility, source password and token verifier, and the count of
    wrong source passwords per address (shared by the replicas through Redis once it is there)."""

    def __init__(self, channel: str, *, private: bool, source_password: str | None,
                 verifier: TokenVerifier | None, trusted_proxies: int = 1) -> None:
        self.channel = channel
        self.trusted_proxies = trusted_proxies  # whom to count wrong passwords against: see client_address
        self.private = private
        self.source_password = source_password
        self.verifier = verifier
        self.password_failures = RateLimiter(None, prefix=f"stream:{channel}:source-failures")

    def share_failures(self, redis: Redis, prefix: str) -> None:
        self.password_failures = RateLimiter(redis, prefix=prefix)

    def client(self, request: web.Request) -> str:
        """The client's address, as far as the front door's X-Forwarded-For reaches (VEZA_TRUSTED_PROXIES)."""
        return client_address(request, self.trusted_proxies)

    def listener(self, request: web.Request) -> None:
        check_listener(request, self.channel, self.private, self.verifier)

    async def broadcaster(self, request: web.Request) -> str:
        """The broadcaster's name."""
        checked = request.get(CHECKED)
        if isinstance(checked, HttpError):
            raise checked
        if isinstance(checked, str):
            return checked
        try:
            name = await self._broadcaster(request)
        except HttpError as exc:
            request[CHECKED] = exc
            raise
        request[CHECKED] = name
        return name

    async def _broadcaster(self, request: web.Request) -> str:
        if request.headers.get("Authorization", "")[:6].lower() != "basic ":
            return check_broadcaster(request, self.channel, self.source_password, self.verifier)
        key = self.client(request)
        left = await self.password_failures.hit(key, rate=PASSWORD_FAILURES_RATE, burst=PASSWORD_FAILURES_BURST,
                                                cost=0)
        if left.remaining < 1:
            wait = max(1, int((1 - left.remaining) / PASSWORD_FAILURES_RATE) + 1)
            raise AccessDenied(429, "too_many_attempts", "too many wrong source passwords from this address",
                               headers={"Retry-After": str(wait)})
        try:
            return check_broadcaster(request, self.channel, self.source_password, self.verifier)
        except AccessDenied as exc:
            if exc.code == "bad_password":
                await self.password_failures.hit(key, rate=PASSWORD_FAILURES_RATE, burst=PASSWORD_FAILURES_BURST)
            raise


ACCESS: web.AppKey[Access] = web.AppKey("stream_access", Access)


def _token(request: web.Request) -> str | None:
    # Players cannot always set headers: a `token` query parameter works too.
    return token_from_request(request) or request.query.get("token") or None


def _verified(token: str, verifier: TokenVerifier | None) -> Principal:
    if verifier is None:
        raise AccessDenied(503, "auth_unavailable", "token verification is not configured")
    try:
        return verifier.verify(token)
    except TokenError as exc:
        raise AccessDenied(401, exc.code, exc.message) from exc


def check_listener(request: web.Request, channel: str, private: bool, verifier: TokenVerifier | None) -> None:
    if not private:
        return
    token = _token(request)
    if token is None:
        raise AccessDenied(401, "token_required", "this channel is private: a listener token is required")
    principal = _verified(token, verifier)
    # A valid token only says who the caller is; a private channel is for those granted a role on it
    # (the API puts `res: {"channel/<name>": "listener" | "broadcaster"}` in stream tokens).
    if principal.resource_role("channel", channel) not in LISTENER_ROLES and not principal.is_admin:
        raise AccessDenied(403, "not_listener", "the token does not grant listening to this private channel")


def check_broadcaster(request: web.Request, channel: str, password: str | None,
                      verifier: TokenVerifier | None) -> str:
    """The broadcaster's name; accepts HTTP Basic with the source password (any user, as Icecast) or a JWT."""
    auth = request.headers.get("Authorization", "")
    if auth[:6].lower() == "basic ":
        try:
            user, _, given = base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise AccessDenied(401, "credentials_malformed", "malformed Basic credentials") from exc
        if password and hmac.compare_digest(given.encode(), password.encode()):
            return user or "source"
        raise AccessDenied(401, "bad_password", "wrong source password")
    token = _token(request)
    if token is None:
        raise AccessDenied(401, "credentials_required", "a source password or broadcaster token is required")
    principal = _verified(token, verifier)
    if principal.resource_role("channel", channel) != BROADCASTER and not principal.is_admin:
        raise AccessDenied(403, "not_broadcaster", "the token does not grant broadcasting on this channel")
    return principal.name
