"""Routes of accounts: register, log in with a password, refresh, log out."""

from __future__ import annotations

from aiohttp import web

from veza_core.web import json_response

from .bodies import Credentials, RefreshRequest, Registration
from .context import API, client_ip
from .errors import read_json
from .rbac import require_user
from .services import accounts, registration


async def register(request: web.Request) -> web.Response:
    """The same answer whether or not the address has an account (see `services.registration`)."""
    body = await read_json(request, Registration)
    await registration.register(request.app[API], email=body.email, password=body.password,
                                display_name=body.display_name, ip=client_ip(request))
    return json_response({"status": "check_email"}, status=202)


async def login(request: web.Request) -> web.Response:
    body = await read_json(request, Credentials)
    return json_response(await accounts.password_login(request.app[API], email=body.email,
                                                       password=body.password, ip=client_ip(request)))


async def refresh(request: web.Request) -> web.Response:
    body = await read_json(request, RefreshRequest)
    return json_response(await accounts.refresh(request.app[API], body.refresh_token, client_ip(request)))


async def logout(request: web.Request) -> web.Response:
    who = require_user(request)
    await accounts.logout(request.app[API], who, client_ip(request))
    return web.Response(status=204)

