"""Routes of magic links (single-use login links by email; see `services.magic_links`)."""

from __future__ import annotations

from aiohttp import web

from veza_core.web import json_response

from .bodies import LinkRequest, LinkToken
from .context import API, client_ip
from .errors import read_json
from .services import magic_links


async def request_link(request: web.Request) -> web.Response:
    body = await read_json(request, LinkRequest)
    ctx = request.app[API]
    await magic_links.send_link(ctx, body.email, client_ip(request))
    return json_response({"status": "sent", "expires_in": ctx.settings.magic_link_ttl_seconds}, status=202)


async def redeem_link(request: web.Request) -> web.Response:
    body = await read_json(request, LinkToken)
    return json_response(await magic_links.redeem(request.app[API], body.token, body.password,
                                                  client_ip(request)))
