"""The local HTTP entry point of `veza up`: the Ingress routes, by path prefix, on one port.

The operator's Ingresses send, on the platform's host and without rewriting paths:
`/chat/<room>` to that room's chat workers, `/stream/<channel>` to that
channel's stream workers and everything else (`/`, `/api/v1/...`,
`/.well-known/jwks.json`) to the API. This router does the same, for HTTP
(request and response bodies streamed, so progressive audio flows) and WebSocket
(subprotocols passed through, frames relayed both ways). Like an Ingress
controller it adds `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host`.

`extra_routes` lets `veza up` serve a few paths itself (the web client's
listen-along bindings, which the API's directory does not hold).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import WSMsgType, web

log = logging.getLogger("veza.up.entrypoint")

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                        "trailers", "transfer-encoding", "upgrade", "host", "content-length"})


@dataclass
class Routes:
    """Path prefix -> upstream base URL (http://127.0.0.1:port); `default` takes the rest (the API)."""

    default: str
    prefixes: dict[str, str] = field(default_factory=dict)

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


def create_app(routes: Routes, extra_routes: Callable[[web.Application], None] | None = None) -> web.Application:
    app = web.Application(client_max_size=1024**3)
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def on_startup(app: web.Application) -> None:
        app[session_key] = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=5, sock_read=None),
            auto_decompress=False, connector=aiohttp.TCPConnector(limit=0))

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
        try:
            upstream = await session.request(
                request.method, url, headers=_forwarded_headers(request),
                data=request.content if request.body_exists else None, allow_redirects=False)
        except (aiohttp.ClientError, OSError) as exc:
            return web.json_response({"error": {"code": "bad_gateway", "message": f"upstream unreachable: {exc}"}},
                                     status=502)
        try:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in HOP_BY_HOP:
                    response.headers.add(key, value)
            if upstream.headers.get("Content-Length") is not None and "Content-Encoding" not in upstream.headers:
                response.content_length = int(upstream.headers["Content-Length"])
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
        except (aiohttp.ClientError, ConnectionResetError, asyncio.CancelledError):
            if request.transport is not None:
                request.transport.close()
            raise
        finally:
            upstream.release()

    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


async def _websocket(request: web.Request, session: aiohttp.ClientSession, url: str) -> web.StreamResponse:
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    headers = _forwarded_headers(request)
    try:
        upstream = await session.ws_connect(url, protocols=protocols, headers=headers, autoping=False,
                                            max_msg_size=0, compress=0)
    except aiohttp.WSServerHandshakeError as exc:
        return web.json_response({"error": {"code": "upstream_refused", "message": exc.message}},
                                 status=exc.status)
    except (aiohttp.ClientError, OSError) as exc:
        return web.json_response({"error": {"code": "bad_gateway", "message": f"upstream unreachable: {exc}"}},
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
