"""The Veza web client: static files (plain JavaScript and CSS, no build step, nothing loaded from outside).

`add_routes(app)` serves the page at `/`, the page mailed links open at `/login/magic` (the token in
the fragment), the admins' analytics page at `/admin/analytics`, and their files under `/web/`. `config`
gives the room -> channel bindings (listen-along) at `/web/config.json`: in a cluster the API mounts the
client (the platform Ingress sends `/` to the API) with the bindings of its directory; `veza up`'s entry
point serves it too, with the bindings of the CR files.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

STATIC = Path(__file__).parent / "static"
TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}


Config = Callable[[], dict[str, Any] | Awaitable[dict[str, Any]]]


def add_routes(app: web.Application, config: Config | None = None) -> None:
    async def index(request: web.Request) -> web.StreamResponse:
        return _file("index.html")

    async def magic(request: web.Request) -> web.StreamResponse:
        return _file("magic.html")

    async def analytics(request: web.Request) -> web.StreamResponse:  # the API refuses non-admins its figures
        return _file("analytics.html")

    async def asset(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == "config.json":
            found = config() if config is not None else {"rooms": {}, "channels": {}}
            if inspect.isawaitable(found):
                found = await found
            return web.json_response(found, headers={"Cache-Control": "no-store"})
        return _file(name)

    app.router.add_get("/", index)
    app.router.add_get("/login/magic", magic)
    app.router.add_get("/admin/analytics", analytics)
    app.router.add_get("/web/{name}", asset)


def _file(name: str) -> web.StreamResponse:
    path = STATIC / name
    if "/" in name or name.startswith(".") or not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={
        "Content-Type": TYPES.get(path.suffix, "application/octet-stream"),
        "Cache-Control": "no-cache",
        "Content-Security-Policy": "default-src 'self'; media-src 'self' blob:; connect-src 'self'; "
                                   "img-src 'self' data:; style-src 'self'; script-src 'self'; "
                                   "frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff"})
