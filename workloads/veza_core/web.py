"""The HTTP skeleton every worker shares: health, readiness, metrics, request ids,
JSON errors (`HttpError`) and access logs, and a graceful shutdown on SIGTERM.

Liveness (`/healthz`) only says the event loop answers; readiness (`/readyz`)
runs the worker's dependency checks and turns 503 while draining, so the
Service stops sending traffic before the process stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import StreamReader, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .eventloop import new_event_loop
from .heap import settle_heap
from .logs import redact, request_id
from .metrics import DEPENDENCY_UP, http_latency, http_requests

log = logging.getLogger("veza.http")

ReadinessCheck = Callable[[], Awaitable[bool]]
COMPONENT = web.AppKey("component", str)
CHECKS = web.AppKey("readiness_checks", dict[str, ReadinessCheck])
DRAINING = web.AppKey("draining", asyncio.Event)

# Paths polled by kubelets and Prometheus: not worth a log line each.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def client_address(request: web.BaseRequest, trusted_proxies: int) -> str:
    """The client's address, from X-Forwarded-For only as far as the platform's own proxies reach: each
    proxy appends its peer, so the client is `trusted_proxies` entries from the end (what comes before is
    the client's to invent). With no trusted proxy, or a header too short or malformed, the peer itself."""
    forwarded = request.headers.get("X-Forwarded-For", "")
    if trusted_proxies > 0 and forwarded:
        chain = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if len(chain) >= trusted_proxies:
            with contextlib.suppress(ValueError):
                return str(ipaddress.ip_address(chain[-trusted_proxies]))
    return request.remote or "unknown"


def json_response(data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON answer, encoded by orjson: twenty rooms of the room list took the standard library's encoder (their
    timestamps formatted by `isoformat` first) ~38 µs, orjson ~7. Datetimes, dates and UUIDs are written as
    `isoformat()` and `str()` write them, so handlers may leave them as they come from the database."""
    return web.Response(body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS), status=status, headers=headers,
                        content_type="application/json", charset="utf-8")


def json_error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return json_response({"error": {"code": code, "message": message, **extra}}, status=status)


class HttpError(Exception):
    """An answer other than success, raised from anywhere below a handler.

    The shared middleware renders it as {"error": {"code", "message", **extra}} with `status` and
    `headers` (a Retry-After, a WWW-Authenticate). `code` is stable: clients branch on it.
    """

    def __init__(self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra

    def response(self) -> web.Response:
        response = json_error(self.status, self.code, self.message, **self.extra)
        response.headers.update(self.headers)
        return response


def new_request_id() -> str:
    """16 hex digits naming one request in logs and answers. A correlation id, not a secret (clients may send their
    own), so the process's PRNG serves: an OS random read per request cost more than the rest of the id's work."""
    return f"{random.getrandbits(64):016x}"


@web.middleware
async def observe(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                  ) -> web.StreamResponse:
    rid = request.headers.get("X-Request-Id") or new_request_id()
    token = request_id.set(rid[:64])
    started = time.perf_counter()
    status = 500
    try:
        try:
            response = await handler(request)
        except HttpError as exc:
            response = exc.response()
        except web.HTTPException as exc:
            # Turn aiohttp's plain-text errors into the JSON shape clients expect.
            if exc.status >= 400 and exc.content_type != "application/json":
                raise _json_http_error(exc) from exc
            raise
        except Exception:
            log.exception("unhandled error", extra={"path": request.path})
            response = json_error(500, "internal_error", "internal error")
        status = response.status
        if not response.prepared:
            response.headers["X-Request-Id"] = rid
        return response
    except web.HTTPException as exc:
        status = exc.status
        exc.headers["X-Request-Id"] = rid
        raise
    finally:
        elapsed = time.perf_counter() - started
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        component = request.app[COMPONENT]
        http_requests(component, route, request.method, status).inc()
        http_latency(component, route).observe(elapsed)
        path = request.path
        if path not in QUIET_PATHS and log.isEnabledFor(logging.INFO):  # the fields are built only for a line
            fields = {"method": request.method, "path": path, "status": status,
                      "duration_ms": round(elapsed * 1000, 2), "remote": request.remote}
            if request.query_string:
                fields["query"] = redact(request.query_string)
            log.info("request", extra=fields)
        request_id.reset(token)


def _json_http_error(exc: web.HTTPException) -> web.HTTPException:
    """The same status and headers with a JSON body {"error": {"code", "message"}}."""
    code = exc.reason.lower().replace(" ", "_")
    default_text = f"{exc.status}: {exc.reason}"
    body = json_error(exc.status, code, exc.text if exc.text and exc.text != default_text else exc.reason)
    keep = ("retry-after", "allow", "www-authenticate")
    new = web.HTTPException(text=body.text, content_type="application/json",
                            headers={k: v for k, v in exc.headers.items() if k.lower() in keep})
    new.set_status(exc.status, exc.reason)
    return new


class _UnframedBody:
    """Takes the connection's bytes after the headers, for a request without Content-Length or chunked encoding."""

    def __init__(self, reader: StreamReader) -> None:
        self.reader = reader

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.reader.feed_data(data)
        return False, b""

    def feed_eof(self) -> None:
        self.reader.feed_eof()


def unframed(request: web.BaseRequest) -> bool:
    """Neither Content-Length nor chunked: what Icecast source clients (ffmpeg's icecast://) send, read until the
    connection closes. aiohttp's parser takes such a request as bodiless."""
    return ("Content-Length" not in request.headers
            and "chunked" not in request.headers.get("Transfer-Encoding", "").lower())


def divert_body(request: web.BaseRequest) -> StreamReader:
    """The connection's bytes from now on, as the body of an unframed request (aiohttp's parser would take them as
    the next request); they end when the client closes. Only safe while the client waits for an answer (before
    `100 Continue`), so that none of them has been parsed yet; the connection cannot be reused afterwards."""
    reader = StreamReader(request.protocol, 2**16, loop=asyncio.get_running_loop())
    request.protocol.set_parser(_UnframedBody(reader))  # type: ignore[arg-type]
    return reader


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


def _internal(request: web.Request) -> None:
    """Readiness details and metrics are for the kubelet and Prometheus, which reach the pod
    directly; through the front door (which adds X-Forwarded-For) the API's `/` route would
    publish them to anyone."""
    if "X-Forwarded-For" in request.headers:
        raise HttpError(404, "not_found", "not found")


async def readyz(request: web.Request) -> web.Response:
    _internal(request)
    if request.app[DRAINING].is_set():
        return json_response({"status": "draining"}, status=503)
    component = request.app[COMPONENT]
    results: dict[str, bool] = {}
    for name, check in request.app[CHECKS].items():
        try:
            results[name] = bool(await asyncio.wait_for(check(), 2.0))
        except Exception:
            results[name] = False
        DEPENDENCY_UP.labels(component, name).set(1 if results[name] else 0)
    ok = all(results.values())
    return json_response({"status": "ready" if ok else "not_ready", "checks": results},
                         status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    _internal(request)
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(component: str, *, client_max_size: int = 1024**2) -> web.Application:
    """An application with the shared middleware and endpoints; the worker adds its routes."""
    app = web.Application(middlewares=[observe], client_max_size=client_max_size)
    app[COMPONENT] = component
    app[CHECKS] = {}
    app[DRAINING] = asyncio.Event()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)

    async def start_draining(app: web.Application) -> None:
        app[DRAINING].set()

    app.on_shutdown.insert(0, start_draining)
    return app


def add_readiness_check(app: web.Application, name: str, check: ReadinessCheck) -> None:
    app[CHECKS][name] = check


def run(app: web.Application, host: str, port: int, *, shutdown_grace: float = 20.0, backlog: int = 128,
        event_loop: str | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then shut down within the grace period.

    aiohttp turns the signal into a graceful exit: listening sockets close first,
    `on_shutdown` hooks run (workers close WebSockets with 1012 there), then
    in-flight requests get up to `shutdown_grace` seconds to finish. `backlog`: connections the kernel queues
    before the worker accepts them (aiohttp's default; a rush of listeners needs more). `event_loop`: "uvloop" or
    "asyncio" (Settings.event_loop; None: `VEZA_EVENT_LOOP`, as `veza_core.eventloop` reads it). Once started,
    the heap is settled (`veza_core.heap`).
    """
    async def settle(_: web.Application) -> None:  # after the app's own start-up: what it allocated is boot's too
        settle_heap()

    app.on_startup.append(settle)
    web.run_app(app, host=host, port=port, shutdown_timeout=shutdown_grace, backlog=backlog, access_log=None,
                print=lambda *_: None, handle_signals=True, loop=new_event_loop(event_loop))
