"""`GET /stream/{channel}/now-playing`: what is on air, who encodes it, how many listen.

A private channel's is for its listeners only (the same check as its audio)."""

from __future__ import annotations

from aiohttp import web

from veza_core.web import HttpError, json_response

from .access import ACCESS
from .listeners import LISTENERS


async def now_playing(request: web.Request) -> web.Response:
    listeners = request.app[LISTENERS]
    if request.match_info["channel"] != listeners.channel.name:
        raise HttpError(404, "channel_not_found", "no such channel on this worker")
    request.app[ACCESS].listener(request)
    return json_response(listeners.now_playing())
