"""Routes of tokens: the JWKS and short tokens for the chat and stream services."""

from __future__ import annotations

from aiohttp import web

from veza_core.web import json_response

from .bodies import ServiceTokenRequest
from .context import API
from .errors import read_json
from .rbac import require_user
from .services import tokens


async def service_token(request: web.Request) -> web.Response:
    """POST /api/v1/auth/service-token: a short token for the chat or stream service."""
    who = require_user(request)
    body = await read_json(request, ServiceTokenRequest)
    return json_response(await tokens.service_token(request.app[API], who, body.audience))


async def jwks(request: web.Request) -> web.Response:
    return json_response(request.app[API].keys.jwks(), headers={"Cache-Control": "public, max-age=60"})
