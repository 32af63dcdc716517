"""Routes of the OpenID Connect login (the flow is in `services.oidc_login`).

GET /api/v1/auth/oidc/login redirects the browser to the provider;
GET /api/v1/auth/oidc/callback answers the provider's redirect with Veza tokens.
"""

from __future__ import annotations

from aiohttp import web

from veza_core.web import HttpError, json_response

from .context import API, client_ip
from .services import oidc_login

# The pending login lives in the browser that started it: HttpOnly (no script reads it), Lax (sent on the
# provider's top-level redirect back, not on cross-site subrequests), only to the OIDC routes.
PENDING_COOKIE = "veza_oidc_login"
COOKIE_PATH = "/api/v1/auth/oidc/"


def _secure(request: web.Request) -> bool:
    return request.app[API].settings.public_url.startswith("https://") or request.secure


async def login(request: web.Request) -> web.Response:
    url, pending = await oidc_login.begin(request.app[API])
    found = web.HTTPFound(url)
    found.set_cookie(PENDING_COOKIE, pending, max_age=int(oidc_login.REQUEST_TTL.total_seconds()), path=COOKIE_PATH,
                     httponly=True, secure=_secure(request), samesite="Lax")
    raise found


async def callback(request: web.Request) -> web.Response:
    ctx = request.app[API]
    oidc_login.client(ctx)  # 404 before anything else when no provider is configured
    q = request.query
    if "error" in q:
        raise HttpError(401, "oidc_denied", f"the identity provider refused: {q.get('error', '')[:100]}")
    code, state = q.get("code", ""), q.get("state", "")
    if not code or not state or len(code) > 2048 or len(state) > 256:
        raise HttpError(400, "invalid_callback", "code and state are required")
    answer = json_response(await oidc_login.finish(ctx, code=code, state=state, ip=client_ip(request),
                                                   pending_login=request.cookies.get(PENDING_COOKIE)))
    answer.del_cookie(PENDING_COOKIE, path=COOKIE_PATH)  # single use in this browser
    return answer
