"""The API application: routes, middleware, and the context they share (built once
from the settings `cli.run` read, kept under `context.API`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from veza_core import directory, tasks
from veza_core.auth import AUDIENCE_API, TokenIssuer, TokenVerifier
from veza_core.breaker import CircuitBreaker
from veza_core.db import create_pool
from veza_core.keys import KeySet
from veza_core.ratelimit import RateLimiter
from veza_core.replica import ReadRouter, read_url
from veza_core.storage import ObjectStore
from veza_core.web import add_readiness_check, create_app

from . import accounts, analytics, audit, magiclinks, moderation, oidc, openapi, rooms, tokens, tracks, users
from .bus import Publisher
from .context import API, Api
from .mail import Mailer
from .middleware import MIDDLEWARES
from .oidc_client import OidcClient
from .passwords import Passwords
from .revocations import ActiveSessions
from .services.analytics import CONSUMER, AnalyticsConsumer
from .services.room_load import ROOM_LOAD, RoomLoad
from .services.sessions import revocations_channel
from .settings import ApiSettings

PREFIX = "/api/v1"
log = logging.getLogger("veza.api")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/.well-known/jwks.json", tokens.jwks)
    r.add_get(f"{PREFIX}/openapi.json", openapi.serve)
    r.add_post(f"{PREFIX}/auth/register", accounts.register)
    r.add_post(f"{PREFIX}/auth/login", accounts.login)
    r.add_post(f"{PREFIX}/auth/refresh", accounts.refresh)
    r.add_post(f"{PREFIX}/auth/logout", accounts.logout)
    r.add_post(f"{PREFIX}/auth/service-token", tokens.service_token)
    r.add_post(f"{PREFIX}/auth/magic-link", magiclinks.request_link)
    r.add_post(f"{PREFIX}/auth/magic-link/verify", magiclinks.redeem_link)
    r.add_get(f"{PREFIX}/auth/oidc/login", oidc.login)
    r.add_get(f"{PREFIX}/auth/oidc/callback", oidc.callback)
    r.add_get(f"{PREFIX}/me", users.get_me)
    r.add_patch(f"{PREFIX}/me", users.patch_me)

    r.add_get(f"{PREFIX}/rooms", rooms.list_rooms)
    r.add_get(f"{PREFIX}/rooms/{{name}}", rooms.get_room)
    r.add_post(f"{PREFIX}/rooms/{{name}}/moderation", moderation.moderate)
    r.add_get(f"{PREFIX}/rooms/{{name}}/moderation", moderation.list_actions)
    r.add_get(f"{PREFIX}/channels", rooms.list_channels)
    r.add_get(f"{PREFIX}/channels/{{name}}", rooms.get_channel)
    # Before the rooms' directory routes: a room may be named "load" (its PUT and DELETE still reach it).
    r.add_get(f"{PREFIX}/admin/rooms/load", rooms.room_load)
    # Rooms and channels share their role and directory routes.
    for kind, plural in (("room", "rooms"), ("channel", "channels")):
        r.add_put(f"{PREFIX}/{plural}/{{name}}/members/{{user_id}}", rooms.member_role(kind, grant=True))
        r.add_delete(f"{PREFIX}/{plural}/{{name}}/members/{{user_id}}", rooms.member_role(kind, grant=False))
        r.add_get(f"{PREFIX}/admin/{plural}", rooms.declared(kind))
        r.add_put(f"{PREFIX}/admin/{plural}/{{name}}", rooms.declare(kind))
        r.add_delete(f"{PREFIX}/admin/{plural}/{{name}}", rooms.undeclare(kind))

    r.add_post(f"{PREFIX}/tracks", tracks.upload)
    r.add_get(f"{PREFIX}/tracks", tracks.list_tracks)
    r.add_get(f"{PREFIX}/tracks/{{id}}", tracks.get_track)
    r.add_delete(f"{PREFIX}/tracks/{{id}}", tracks.delete_track)

    r.add_get(f"{PREFIX}/admin/users", users.list_users)
    r.add_patch(f"{PREFIX}/admin/users/{{id}}", users.patch_user)
    r.add_get(f"{PREFIX}/admin/audit", audit.list_audit)
    r.add_get(f"{PREFIX}/admin/analytics/messages", analytics.messages)
    r.add_get(f"{PREFIX}/admin/analytics/active-users", analytics.active_users)
    r.add_get(f"{PREFIX}/admin/analytics/listening", analytics.listening)
    r.add_get(f"{PREFIX}/admin/analytics/peaks", analytics.peaks)
    r.add_get(f"{PREFIX}/admin/analytics/top-tracks", analytics.top_tracks)


def create_api_app(settings: ApiSettings) -> web.Application:
    if not settings.database_url:
        raise ValueError("the API needs VEZA_DATABASE_URL")
    app = create_app("api", client_max_size=settings.max_body_bytes)
    app.middlewares.extend(MIDDLEWARES)
    add_routes(app)
    app[tracks.UPLOADS] = asyncio.Semaphore(settings.max_concurrent_uploads)
    # The web client at `/` (the platform's Ingress sends `/` to the API); static files only.
    import veza_web

    async def bindings() -> dict[str, Any]:  # listen-along, from the directory (public rooms and channels)
        return await directory.bindings(app[API].pool)

    veza_web.add_routes(app, config=bindings)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        assert settings.database_url
        pool = await create_pool(settings.database_url, max_size=20)
        analytics_url = settings.analytics_database_url or settings.database_url
        analytics_pool = pool if analytics_url == settings.database_url else await create_pool(analytics_url,
                                                                                               max_size=5)
        redis_url = settings.redis_url or "redis://127.0.0.1:6379"
        redis = aioredis.from_url(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
        keys = KeySet(settings.jwt_keys_dir)
        issuer_url = settings.jwt_issuer.rstrip("/")
        ctx = Api(
            settings=settings, pool=pool, redis=redis, keys=keys,
            redis_breaker=CircuitBreaker("api-redis", errors=(RedisError, OSError)),
            issuer=TokenIssuer(keys, issuer=issuer_url),
            verifier=TokenVerifier(keys, issuer=issuer_url, audience=AUDIENCE_API,
                                   algorithms=settings.jwt_algorithms),
            limiter=RateLimiter(redis, prefix=f"veza:{settings.platform}:ratelimit"),
            passwords=Passwords(time_cost=settings.argon2_time_cost, memory_kib=settings.argon2_memory_kib,
                                parallelism=settings.argon2_parallelism),
            store=ObjectStore(settings.s3_bucket, endpoint_url=settings.s3_endpoint, region=settings.s3_region),
            mailer=Mailer(settings),
            oidc=OidcClient(settings) if settings.oidc_issuer and settings.oidc_client_id else None,
            publisher=Publisher(settings.nats_url, name=f"veza-api-{settings.platform}", auth=settings),
            analytics_pool=analytics_pool,
            sessions=ActiveSessions(settings.session_cache_seconds),
            reads=ReadRouter(pool, read_url(settings.database_url, settings.database_read_url,
                                            settings.database_read_host),
                             max_lag=settings.database_read_max_lag_seconds, component="api"),
        )
        app[API] = ctx
        notices = asyncio.create_task(ctx.sessions.listen(redis_url, revocations_channel(ctx)),
                                      name="revocation-notices")
        assert ctx.reads is not None
        await ctx.reads.start()
        ctx.publisher.start()
        app[ROOM_LOAD] = RoomLoad(settings.platform)  # on the publisher's connection; empty without NATS
        app[ROOM_LOAD].start(ctx.publisher.connection)
        if settings.analytics and settings.nats_url:  # one replica consumes at a time (docs/analytics.md)
            app[CONSUMER] = AnalyticsConsumer(
                platform=settings.platform, nats_url=settings.nats_url, store_url=analytics_url, pool=analytics_pool,
                auth=settings, rescan_seconds=settings.analytics_rescan_seconds)
            app[CONSUMER].start()
        try:
            await asyncio.wait_for(ctx.store.ensure_bucket(), 10)
        except Exception as exc:  # S3 may come later; uploads fail until then, the rest works
            log.warning("object store not ready", extra={"error": repr(exc)})

        async def database() -> bool:
            return bool(await pool.fetchval("SELECT 1"))

        async def signing_key() -> bool:
            return bool(keys.active_signing_key())

        add_readiness_check(app, "postgres", database)
        add_readiness_check(app, "s3", ctx.store.ready)
        add_readiness_check(app, "signing_key", signing_key)
        try:
            yield
        finally:
            if not await tasks.stop(notices):
                log.warning("revocation notices did not stop")
            if CONSUMER in app:
                await app[CONSUMER].stop()
            await ctx.reads.close()
            await app[ROOM_LOAD].stop()
            await ctx.publisher.close()
            if analytics_pool is not pool:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(analytics_pool.close(), 5.0)
            await redis.aclose()
            try:  # a pool reconnecting to a PostgreSQL that is gone would wait out its connect timeout
                await asyncio.wait_for(pool.close(), 5.0)
            except TimeoutError:
                pool.terminate()

    app.cleanup_ctx.append(resources)
    return app
