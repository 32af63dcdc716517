"""The Veza web client: static files (plain JavaScript and CSS, no build step, nothing loaded from outside).

`add_routes(app)` serves the page at `/`, the page mailed links open at `/login/magic` (the token in
the fragment), and their files under `/web/`. In a cluster
the API mounts it (the platform Ingress sends `/` to the API); `veza up`'s entry
point serves it too, with `config` giving the room -> channel bindings
(listen-along) from the CR files at `/web/config.json`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

STATIC = Path(__file__).parent / "static"
TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}


def add_routes(app: web.Application, config: Callable[[], dict[str, Any]] | None = None) -> None:
    async def index(request: web.Request) -> web.StreamResponse:
        return _file("index.html")

    async def magic(request: web.Request) -> web.StreamResponse:
        return _file("magic.html")

    async def asset(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == "config.json":
            return web.json_response(config() if config is not None else {"rooms": {}, "channels": {}},
                                     headers={"Cache-Control": "no-store"})
        return _file(name)

    app.router.add_get("/", index)
    app.router.add_get("/login/magic", magic)
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
