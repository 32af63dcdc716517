"""The chat worker's HTTP handlers (served under /chat/{room}/): thin, they find the room's service
(opening a pooled room on its first request), check the token, parse the query, and hand over to the
service (REST) or to a session (WebSocket)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiohttp import web

from veza_core.auth import token_from_request
from veza_core.web import HttpError, json_response

from . import access
from . import protocol as p
from .room import Client
from .service import ChatService
from .session import Session
from .store import StoreUnavailable
from .worker import WORKER


async def serving_room(request: web.Request) -> ChatService:
    """The service of the room in the URL, when this worker serves it and takes requests now. A pool worker opens
    a room only for a request whose token holds (a stranger's requests cost it nothing)."""
    worker, room = request.app[WORKER], request.match_info["room"]
    if worker.pooled and room not in worker.rooms:
        access.authenticate(token_from_request(request), worker.verifier, room, worker.revocations)
    return await worker.serving(room)


def query_int(request: web.Request, name: str, minimum: int, maximum: int = 2**62) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    if not value.isdigit() or not (minimum <= int(value) <= maximum):
        raise HttpError(400, "bad_request", f"expected an integer in {minimum}..{maximum}, got {value[:20]!r}")
    return int(value)


async def history(request: web.Request) -> web.Response:
    service = await serving_room(request)
    service.authorize(token_from_request(request))
    before = query_int(request, "before", 1)
    after = query_int(request, "after", 0)
    limit = query_int(request, "limit", 1, p.MAX_HISTORY) or 50
    try:
        events, more = await service.history_page(before, after, limit)
        last = await service.store.last_seq(replica=True)
    except (StoreUnavailable, OSError) as exc:
        raise HttpError(503, p.STORE_UNAVAILABLE, f"history is unavailable: {exc}") from None
    return json_response({"room": service.room_name, "last_seq": last, "events": events, "has_more": more})


async def reads(request: web.Request) -> web.Response:
    """Read receipts: the last read seq of every user who sent one."""
    service = await serving_room(request)
    service.authorize(token_from_request(request))
    try:
        found = await service.store.reads()
    except (StoreUnavailable, OSError) as exc:
        raise HttpError(503, p.STORE_UNAVAILABLE, f"receipts are unavailable: {exc}") from None
    return json_response({"room": service.room_name, "reads": found})


async def websocket(request: web.Request) -> web.StreamResponse:
    service = await serving_room(request)
    principal, role = service.authorize(token_from_request(request))
    after = query_int(request, "after", 0)
    if service.room_full(principal.subject):
        raise HttpError(403, p.ROOM_FULL, "the room is full")
    ws = web.WebSocketResponse(protocols=(p.PROTOCOL,), heartbeat=30.0, compress=False, autoping=True,
                               max_msg_size=service.spec.limits.max_message_bytes * 6 + 4096)
    await ws.prepare(request)
    sid = principal.claims.get("sid")
    client = Client(ws, request, principal.subject, principal.name, role, sid if isinstance(sid, str) else None)
    if service.revocations.revoked(principal):  # revoked while the handshake was under way
        await ws.close(code=p.CLOSE_SESSION_REVOKED, message=b"session revoked")
        return ws
    # The token let this socket in until it expires, not for as long as it stays open.
    exp = principal.claims.get("exp")
    expiry = asyncio.get_running_loop().call_later(
        max(0.0, float(exp) - time.time()), service.close_socket, client, p.CLOSE_TOKEN_EXPIRED, "token expired",
    ) if isinstance(exp, int | float) else None
    try:
        await Session(service, client).run(after)
    finally:
        if expiry is not None:
            expiry.cancel()
        if client.close_task is not None:  # closed by the server: its close frame goes out before the connection ends
            with contextlib.suppress(Exception):
                await asyncio.shield(client.close_task)
    return ws


def add_routes(app: web.Application) -> None:
    app.router.add_get("/chat/{room}/ws", websocket)
    app.router.add_get("/chat/{room}/history", history)
    app.router.add_get("/chat/{room}/reads", reads)
