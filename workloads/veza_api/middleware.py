"""The API's request pipeline, after the shared `observe` (request ids, JSON access
logs, metrics, and rendering of `HttpError`): CORS → body size → per-IP rate
limit → authentication → revocation → per-user rate limit (the last four in `guard`)
→ the handler → no-store on /auth/ answers and the read router's note of a write.

One aiohttp middleware (`pipeline`) runs them all: every layer is a coroutine and a
call more on every request, and the steps need no more than plain calls.
"""

from __future__ import annotations

import functools
import hmac
import logging
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from veza_core.auth import TokenError, token_from_request
from veza_core.ratelimit import Bucket
from veza_core.web import HttpError, json_error

from .context import API, Api, client_ip
from .rbac import DIRECTORY_ROUTES, REQUEST_OPERATOR, REQUEST_PRINCIPAL
from .services.accounts import too_many
from .services.sessions import ACTIVE, REVOKED, is_revoked_uncached, state_key

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger("veza.api")

# Routes with a larger body limit than max_body_bytes (they stream their body).
UPLOAD_PATHS = frozenset({"/api/v1/tracks"})
CORS_METHODS = "GET, POST, PUT, PATCH, DELETE"
CORS_HEADERS = "Authorization, Content-Type, X-Request-Id"


def _allowed_origin(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    if not origin:
        return None
    allowed = request.app[API].settings.cors_origin_set
    if "*" in allowed or origin.rstrip("/") in allowed:
        return origin
    return None


@web.middleware
async def pipeline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CORS around everything (error answers carry its headers too, so browsers can read them), then `serve`."""
    origin = _allowed_origin(request)
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        if origin is None:
            return json_error(403, "cors_origin_denied", "this origin may not call the API")
        return web.Response(status=204, headers={
            "Access-Control-Allow-Origin": origin, "Access-Control-Allow-Methods": CORS_METHODS,
            "Access-Control-Allow-Headers": CORS_HEADERS, "Access-Control-Max-Age": "600", "Vary": "Origin"})
    try:
        response = await serve(request, handler)
    except HttpError as exc:
        # Rendered by `observe`, outside us: it takes these headers along.
        if origin is not None:
            exc.headers.update(_cors_headers(origin))
        raise
    except web.HTTPException as exc:
        if origin is not None:
            exc.headers["Access-Control-Allow-Origin"] = origin
            exc.headers["Vary"] = "Origin"
        raise
    if request.path.startswith(AUTH_PREFIX):
        no_store(response)
    if origin is not None and not response.prepared:
        response.headers.update(_cors_headers(origin))
    return response


async def serve(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The body limit, `guard` for /api/ requests, the handler, and then the note of a possible write."""
    body_limit(request)
    if request.path.startswith("/api/"):
        await guard(request)
    try:
        return await handler(request)
    finally:
        note_writes(request)


def _cors_headers(origin: str) -> dict[str, str]:
    # Tokens travel in the Authorization header, never in cookies: no credentials mode.
    return {"Access-Control-Allow-Origin": origin, "Access-Control-Expose-Headers": "Retry-After, X-Request-Id",
            "Vary": "Origin"}


def body_limit(request: web.Request) -> None:
    """413 before reading a body whose declared size is too big (aiohttp also stops
    undeclared chunked bodies at `client_max_size` while reading them)."""
    if request.content_length is None:
        return
    settings = request.app[API].settings
    limit = settings.max_track_bytes if request.path in UPLOAD_PATHS else settings.max_body_bytes
    if request.content_length > limit:
        raise HttpError(413, "body_too_large", f"the body exceeds {limit} bytes")


async def guard(request: web.Request) -> None:
    """Every /api/ request: the per-IP token bucket, then, with a bearer token, authentication (endpoints decide
    whether they need one), the session's revocation and the per-user bucket.

    A busy client's request usually asks Redis nothing: the buckets' tokens come from leases this replica took
    ahead (`Leases`) and its session was seen active a moment ago (`ActiveSessions`, forgotten on a revocation's
    notice). Otherwise one Redis round trip serves all three (`RateLimiter.hit_gated`: the address's bucket, the
    session's cached state, then the account's bucket only if the session is cached as active), taking the next
    leases with it. The token is verified first (a token seen before costs a lookup in the verifier's cache),
    since the user's bucket and session come from it; a token that fails still takes from the address's bucket, so
    guessing tokens is limited per address like anything else, and answers 429 once that bucket is empty.
    """
    ctx = request.app[API]
    s = ctx.settings
    ip = Bucket(f"ip:{client_ip(request)}", rate=s.rate_ip_per_second, burst=s.rate_ip_burst)
    token = token_from_request(request)
    if token is None or _is_directory_token(s.directory_token, token):
        await _take(ctx, ip, "requests from this address")
        if token is not None:
            resource = request.match_info.route.resource
            if resource is None or resource.canonical not in DIRECTORY_ROUTES:
                raise HttpError(401, "invalid_token", "this credential is valid for the directory endpoints only",
                                headers=dict(INVALID_TOKEN))
            request[REQUEST_OPERATOR] = True
        return
    try:
        who = ctx.verifier.verify(token)
    except TokenError as exc:
        await _take(ctx, ip, "requests from this address")
        raise HttpError(401, exc.code, exc.message, headers=dict(INVALID_TOKEN)) from exc
    sid = _session_id(who.claims.get("sid"))
    if sid is None:
        await _take(ctx, ip, "requests from this address")
        raise _revoked()
    user = Bucket(f"user:{who.subject}", rate=s.rate_user_per_second, burst=s.rate_user_burst)
    leases, sessions = ctx.leases, ctx.sessions
    if sessions.active(sid) and leases.spend(ip):
        if not leases.spend(user):  # the account's lease is spent (its bucket's answer is not known here)
            await _take(ctx, user, "requests for this account")
        request[REQUEST_PRINCIPAL] = who
        return
    generation = sessions.generation
    ip, user = leases.ask(ip), leases.ask(user)
    gated = await ctx.limiter.hit_gated([ip], state_key(ctx, sid), ACTIVE, [user])
    leases.keep(ip, gated.decisions[0])
    if not gated.decisions[0].allowed:
        raise too_many(gated.decisions[0], "requests from this address")
    if gated.gate == REVOKED:
        raise _revoked()
    if gated.gate == ACTIVE:
        decision = gated.decisions[1]
        leases.keep(user, decision)
        sessions.remember(sid, generation)
    else:  # no cached answer (or Redis unreachable): PostgreSQL's, then the account's bucket on its own
        if await is_revoked_uncached(ctx, sid, redis_answered=gated.gate_read):
            raise _revoked()
        decision = await ctx.limiter.hit(user.key, rate=user.rate, burst=user.burst)
    if not decision.allowed:
        raise too_many(decision, "requests for this account")
    request[REQUEST_PRINCIPAL] = who


INVALID_TOKEN = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


def _revoked() -> HttpError:
    return HttpError(401, "token_revoked", "the session of this token has ended", headers=dict(INVALID_TOKEN))


def _session_id(claim: object) -> uuid.UUID | None:
    return _parse_session_id(claim) if isinstance(claim, str) else None


@functools.lru_cache(maxsize=4096)
def _parse_session_id(claim: str) -> uuid.UUID | None:
    """A client sends the same token, so the same session id, with every request: parsed once."""
    try:
        return uuid.UUID(claim)
    except ValueError:
        return None


async def _take(ctx: Api, bucket: Bucket, what: str) -> None:
    decision = await ctx.limiter.hit_leased(bucket, ctx.leases)
    if not decision.allowed:
        raise too_many(decision, what)


def _is_directory_token(expected: str | None, token: str) -> bool:
    return expected is not None and hmac.compare_digest(token.encode(), expected.encode())


def no_store(response: web.StreamResponse) -> None:
    """Answers under /auth/ carry tokens (access, refresh, service, the OIDC callback's): no cache,
    shared or private, may keep them."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"


WRITE_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def note_writes(request: web.Request) -> None:
    """After a request that may have written (any method but GET/HEAD/OPTIONS, and the sign-in GETs under
    /auth/), this process's list reads must see its writes: the read router waits for the replica or skips it."""
    reads = request.app[API].reads if API in request.app else None
    if reads is not None and (request.method not in WRITE_SAFE_METHODS or request.path.startswith(AUTH_PREFIX)):
        reads.wrote()


AUTH_PREFIX = "/api/v1/auth/"
MIDDLEWARES = [pipeline]
