"""The local HTTP entry point of `veza up`: the Ingress routes, by path prefix, on one port.

The operator's Ingresses send, on the platform's host and without rewriting paths:
`/chat/<room>` to that room's chat workers, `/stream/<channel>` to that
channel's stream workers and everything else (`/`, `/api/v1/...`,
`/.well-known/jwks.json`) to the API. This router does the same, for HTTP
(request and response bodies streamed, so progressive audio flows) and WebSocket
(subprotocols passed through, frames relayed both ways). Like an Ingress
controller it adds `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host`.

What a client sees is the worker's answer: a refused WebSocket handshake keeps its status,
headers and body, and `Expect: 100-continue` is answered only when the worker answers it (so a
source client learns of a wrong password before it sends audio; its unframed body is streamed
through). Before `veza up` is ready, and for a worker that is not listening, the answer is 503
with Retry-After, as an Ingress gives for a Service without ready endpoints.

`extra_routes` lets `veza up` serve a few paths itself (the web client's
listen-along bindings, which the API's directory does not hold).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import aiohttp
from aiohttp import WSMsgType, web

from veza_core.web import divert_body, json_response, unframed

log = logging.getLogger("veza.up.entrypoint")

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                        "trailers", "transfer-encoding", "upgrade", "host", "content-length"})
RETRY_AFTER = "1"  # seconds: workers start (or restart) within a few
STARTING_PAGE = ("<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=1><title>Veza</title>"
                 "<p>Veza is starting&hellip; this page reloads by itself.")


@dataclass
class Routes:
    """Path prefix -> upstream base URL (http://127.0.0.1:port); `default` takes the rest (the API).

    Until `ready` is set (every worker ready and the directory declared), every request is answered 503 with
    Retry-After, the page included, so nothing half-started is ever served."""

    default: str
    prefixes: dict[str, str] = field(default_factory=dict)
    ready: bool = False

    def upstream(self, path: str) -> str:
        # Ingress pathType Prefix: matches whole path elements, longest prefix wins.
        best, best_len = self.default, 0
        for prefix, target in self.prefixes.items():
            if (path == prefix or path.startswith(prefix.rstrip("/") + "/")) and len(prefix) > best_len:
                best, best_len = target, len(prefix)
        return best


def _forwarded_headers(request: web.Request) -> dict[str, str]:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP
               and not k.lower().startswith("sec-websocket")}
    peer = request.remote or ""
    prior = request.headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    headers["X-Forwarded-Proto"] = request.scheme
    headers["X-Forwarded-Host"] = request.host
    return headers


def _copy_headers(upstream: Mapping[str, str], response: web.StreamResponse) -> None:
    # items() of aiohttp's multidict headers: every value of a repeated header (Set-Cookie), in order.
    for key, value in upstream.items():
        if key.lower() not in HOP_BY_HOP:
            response.headers.add(key, value)


def unavailable(request: web.Request, code: str, message: str) -> web.Response:
    """503 with Retry-After, as an Ingress answers for a Service without ready endpoints; a page that reloads
    itself for a browser, the usual JSON error for the rest."""
    headers = {"Retry-After": RETRY_AFTER, "Cache-Control": "no-store"}
    if "text/html" in request.headers.get("Accept", ""):
        return web.Response(status=503, text=STARTING_PAGE, content_type="text/html", headers=headers)
    return json_response({"error": {"code": code, "message": message}}, status=503, headers=headers)


class HandshakeRefused(Exception):
    """The upstream answered a WebSocket handshake with something else than 101: the whole answer, to pass on."""

    def __init__(self, status: int, reason: str | None, headers: Mapping[str, str], body: bytes) -> None:
        super().__init__(f"{status} {reason}")
        self.status, self.reason, self.headers, self.body = status, reason, headers, body


async def keep_handshake_refusals(request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
                                  ) -> aiohttp.ClientResponse:
    """Client middleware: `ws_connect` drops the body of a refused handshake (its error says only "Invalid response
    status"), but the workers' refusals carry their reason in it (`token_expired`, `banned`...)."""
    response = await handler(request)
    if response.status != 101 and request.headers.get("Upgrade", "").lower() == "websocket":
        try:
            body = await response.read()
        finally:
            response.release()
        raise HandshakeRefused(response.status, response.reason, response.headers, body)
    return response


async def _defer_continue(request: web.Request) -> None:
    """Expect handler of the proxy route: no `100 Continue` from here. The proxy sends it when the upstream does,
    so an upstream's refusal (a source client's wrong password, 401) reaches the client before it sends a body."""
    return None


async def _request_body(request: web.Request, expect: bool) -> AsyncIterator[bytes]:
    """The client's body for the upstream request. With `Expect: 100-continue`, aiohttp's client starts this only
    once the upstream has answered `100 Continue`, and the client is told to go on at that moment: first the
    connection's bytes are diverted when the body is unframed (read until the client closes, as Icecast does)."""
    body = request.content
    if expect:
        if unframed(request):
            body = divert_body(request)
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    async for chunk in body.iter_any():
        yield chunk


def create_app(routes: Routes, extra_routes: Callable[[web.Application], None] | None = None) -> web.Application:
    @web.middleware
    async def until_ready(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        if not routes.ready:
            return unavailable(request, "starting", "Veza is starting; retry shortly")
        return await handler(request)

    app = web.Application(client_max_size=1024**3, middlewares=[until_ready])
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def on_startup(app: web.Application) -> None:
        # No keep-alive to the workers (a loopback connect is cheap): a pooled connection to a worker that has just
        # crashed would fail the next request with a 502, where a fresh connect is refused and answered 503.
        app[session_key] = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=5, sock_read=None), auto_decompress=False,
            connector=aiohttp.TCPConnector(limit=0, force_close=True), middlewares=(keep_handshake_refusals,))

    async def on_cleanup(app: web.Application) -> None:
        await app[session_key].close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    if extra_routes is not None:
        extra_routes(app)

    async def proxy(request: web.Request) -> web.StreamResponse:
        base = routes.upstream(request.path)
        url = base + str(request.rel_url)
        session = request.app[session_key]
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await _websocket(request, session, url)
        expect = request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1)
        # An unframed PUT/POST that waits for 100 Continue is a source client streaming until it hangs up.
        has_body = request.body_exists or (expect and request.method in ("PUT", "POST") and unframed(request))
        try:
            upstream = await session.request(
                request.method, url, headers=_forwarded_headers(request),
                data=_request_body(request, expect) if has_body else None, allow_redirects=False)
        except aiohttp.ClientConnectorError:  # nothing listens: the worker is restarting
            return unavailable(request, "upstream_unavailable", "the worker is not running; retry shortly")
        except (aiohttp.ClientError, OSError) as exc:
            return json_response({"error": {"code": "bad_gateway", "message": f"upstream unreachable: {exc}"}},
                                 status=502)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        try:
            _copy_headers(upstream.headers, response)
            if upstream.headers.get("Content-Length") is not None and "Content-Encoding" not in upstream.headers:
                response.content_length = int(upstream.headers["Content-Length"])
            if expect:
                # A refused client never sent its body, and a diverted one owns the connection: no keep-alive.
                response.force_close()
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        except ConnectionResetError:  # aiohttp's ClientConnectionResetError too: the client went away, as they do
            log.debug("client disconnected", extra={"path": request.path})
            _close(request)
        except aiohttp.ClientError as exc:  # the upstream broke off (a worker stopped): the client sees the end
            log.info("upstream response cut", extra={"path": request.path, "error": repr(exc)})
            _close(request)
        except asyncio.CancelledError:
            _close(request)
            raise
        finally:
            upstream.release()
        return response

    app.router.add_route("*", "/{tail:.*}", proxy, expect_handler=_defer_continue)
    return app


def _close(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


async def _websocket(request: web.Request, session: aiohttp.ClientSession, url: str) -> web.StreamResponse:
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    headers = _forwarded_headers(request)
    try:
        upstream = await session.ws_connect(url, protocols=protocols, headers=headers, autoping=False,
                                            max_msg_size=0, compress=0)
    except HandshakeRefused as refused:  # the worker's refusal, unchanged: status, headers and JSON body
        response = web.Response(status=refused.status, reason=refused.reason, body=refused.body)
        _copy_headers(refused.headers, response)
        return response
    except aiohttp.ClientConnectorError:
        return unavailable(request, "upstream_unavailable", "the worker is not running; retry shortly")
    except (aiohttp.ClientError, OSError) as exc:
        return json_response({"error": {"code": "bad_gateway", "message": f"upstream unreachable: {exc}"}},
                             status=502)
    ws = web.WebSocketResponse(protocols=(upstream.protocol,) if upstream.protocol else (), autoping=False,
                               max_msg_size=0, compress=False)
    await ws.prepare(request)

    async def pump(src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                   dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
        async for msg in src:
            if msg.type == WSMsgType.TEXT:
                await dst.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await dst.send_bytes(msg.data)
            elif msg.type == WSMsgType.PING:
                await dst.ping(msg.data)
            elif msg.type == WSMsgType.PONG:
                await dst.pong(msg.data)
            else:
                break
        code = src.close_code if src.close_code and src.close_code not in (1005, 1006) else 1000
        if not dst.closed:
            await dst.close(code=code, message=b"")

    tasks = [asyncio.create_task(pump(ws, upstream)), asyncio.create_task(pump(upstream, ws))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        with contextlib.suppress(Exception):
            await upstream.close()
        with contextlib.suppress(Exception):
            await ws.close()
    return ws
