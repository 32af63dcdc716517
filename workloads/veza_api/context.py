"""What every handler needs, built once per process and kept on the application
under the typed key `API` (handlers read it with `request.app[API]`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from veza_core.auth import TokenIssuer, TokenVerifier
from veza_core.breaker import CircuitBreaker
from veza_core.keys import KeySet
from veza_core.ratelimit import Leases, RateLimiter
from veza_core.replica import ReadRouter
from veza_core.storage import ObjectStore
from veza_core.web import client_address

from .bus import Publisher
from .mail import Mailer
from .oidc_client import OidcClient
from .passwords import Passwords
from .revocations import ActiveSessions
from .settings import ApiSettings


class MemberCounts(NamedTuple):
    """The counts of one list of rooms, reused whole while the oldest of them is fresh enough."""

    rooms: list[str]
    fetched: float  # when the oldest of them was fetched (monotonic)
    counts: dict[str, int | None]


@dataclass
class Api:
    settings: ApiSettings
    pool: asyncpg.Pool
    redis: aioredis.Redis
    redis_breaker: CircuitBreaker
    keys: KeySet
    issuer: TokenIssuer
    verifier: TokenVerifier
    limiter: RateLimiter
    passwords: Passwords
    store: ObjectStore
    mailer: Mailer
    oidc: OidcClient | None = None
    analytics_pool: asyncpg.Pool | None = None  # the analytics store's (docs/analytics.md); `pool` when it is the same
    publisher: Publisher = field(default_factory=lambda: Publisher(None))
    # Reads that may lag (the list routes): the read replica when fresh enough, else `pool` (docs/deploy.md).
    reads: ReadRouter | None = None
    member_counts: dict[str, tuple[float, int]] = field(default_factory=dict)  # room -> (fetched, count)
    member_count_snapshot: MemberCounts | None = None  # the last call's (rooms.member_counts)
    # Tokens of the request limits taken ahead from Redis, and the sessions seen active: most requests of a busy
    # client then need no Redis round trip (middleware.guard).
    leases: Leases = field(default_factory=Leases)
    sessions: ActiveSessions = field(default_factory=lambda: ActiveSessions(0))
    active_kid: str | None = field(default=None)

    @property
    def lists(self) -> asyncpg.Pool | ReadRouter:
        """Where list routes read: through the read router when it has a replica to route to (else the pool itself,
        not the router's layers of calls around it)."""
        return self.reads if self.reads is not None and self.reads.enabled else self.pool

    def redis_key(self, *parts: str) -> str:
        return ":".join(["veza", self.settings.platform, *parts])


API = web.AppKey("veza_api", Api)


def client_ip(request: web.Request) -> str:
    """The client's address: from X-Forwarded-For only as far as our own proxies reach."""
    return client_address(request, request.app[API].settings.trusted_proxies)
