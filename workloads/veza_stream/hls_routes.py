"""HLS routes: master playlist, media playlists and segments under `/stream/{channel}/hls/`."""

from __future__ import annotations

from aiohttp import web

from veza_core.web import json_error

from .access import AccessDenied, check_listener
from .hls import EXTENSIONS, PLAYLIST_TYPE, SEGMENT_TYPES, Segmenter, master_playlist
from .state import WORKER


def _checked(request: web.Request) -> web.Response | None:
    worker = request.app[WORKER]
    if request.match_info["channel"] != worker.channel.name:
        return json_error(404, "channel_not_found", "no such channel on this worker")
    if not worker.spec.delivery.hls.enabled:
        return json_error(404, "hls_disabled", "HLS is disabled for this channel")
    try:
        check_listener(request, worker.channel.name, worker.spec.visibility == "private", worker.verifier)
    except AccessDenied as exc:
        return json_error(exc.status, exc.code, exc.message)
    return None


def _segmenter(request: web.Request) -> Segmenter | web.Response:
    worker = request.app[WORKER]
    segmenter = worker.channel.segmenters.get(request.match_info["rendition"])
    if segmenter is None:
        return json_error(404, "rendition_not_found", f"HLS renditions: {', '.join(worker.channel.segmenters)}")
    return segmenter


NO_CACHE = {"Cache-Control": "no-cache"}


async def master(request: web.Request) -> web.Response:
    if (error := _checked(request)) is not None:
        return error
    spec = request.app[WORKER].spec
    body = master_playlist([(r.name, r.codec, r.bitrate_kbps) for r in spec.renditions
                            if r.name in request.app[WORKER].channel.segmenters])
    return web.Response(text=body, content_type=PLAYLIST_TYPE, headers=NO_CACHE)


async def media_playlist(request: web.Request) -> web.Response:
    if (error := _checked(request)) is not None:
        return error
    segmenter = _segmenter(request)
    if isinstance(segmenter, web.Response):
        return segmenter
    return web.Response(text=segmenter.playlist(), content_type=PLAYLIST_TYPE, headers=NO_CACHE)


async def segment(request: web.Request) -> web.Response:
    if (error := _checked(request)) is not None:
        return error
    segmenter = _segmenter(request)
    if isinstance(segmenter, web.Response):
        return segmenter
    if request.match_info["ext"] != EXTENSIONS[segmenter.codec]:
        return json_error(404, "segment_not_found", "wrong segment extension")
    found = segmenter.segment(int(request.match_info["sequence"]))
    if found is None:
        return json_error(404, "segment_not_found", "segment expired or not yet cut")
    return web.Response(body=found.data, content_type=SEGMENT_TYPES[segmenter.codec],
                        headers={"Cache-Control": "max-age=60"})
