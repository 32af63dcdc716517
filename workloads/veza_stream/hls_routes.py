"""HLS routes: master playlist, media playlists and segments under `/stream/{channel}/hls/`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from aiohttp import web

from veza_core.web import HttpError

from .access import ACCESS
from .channel import CHANNEL, Channel
from .hls import EXTENSIONS, INIT_TYPE, PLAYLIST_TYPE, SEGMENT_TYPES, Segmenter, master_playlist


def _checked(request: web.Request) -> Channel:
    """The channel, if the request may have its HLS (HttpError otherwise)."""
    channel = request.app[CHANNEL]
    if request.match_info["channel"] != channel.name:
        raise HttpError(404, "channel_not_found", "no such channel on this worker")
    if not channel.spec.delivery.hls.enabled:
        raise HttpError(404, "hls_disabled", "HLS is disabled for this channel")
    request.app[ACCESS].listener(request)
    return channel


def _segmenter(request: web.Request) -> Segmenter:
    """The rendition's segmenter, if the request may have it (HttpError otherwise)."""
    channel = _checked(request)
    segmenter = channel.segmenters.get(request.match_info["rendition"])
    if segmenter is None:
        raise HttpError(404, "rendition_not_found", f"HLS renditions: {', '.join(channel.segmenters)}")
    return segmenter


NO_CACHE = {"Cache-Control": "no-cache"}


async def master(request: web.Request) -> web.Response:
    channel = _checked(request)
    body = master_playlist([(r.name, r.codec, r.bitrate_kbps) for r in channel.spec.renditions
                            if r.name in channel.segmenters])
    return web.Response(text=body, content_type=PLAYLIST_TYPE, headers=NO_CACHE)


async def _wait(segmenter: Segmenter, ready: Callable[[], bool], seconds: float) -> bool:
    deadline = asyncio.get_running_loop().time() + seconds
    while not ready():
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(segmenter.changed.wait(), left)
    return True


async def media_playlist(request: web.Request) -> web.Response:
    segmenter = _segmenter(request)
    if segmenter.part and "_HLS_msn" in request.query:
        # LL-HLS blocking reload: answer once the playlist holds segment _HLS_msn (or its part _HLS_part).
        try:
            msn = int(request.query["_HLS_msn"])
            part = int(request.query["_HLS_part"]) if "_HLS_part" in request.query else None
        except ValueError:
            raise HttpError(400, "bad_hls_request", "_HLS_msn and _HLS_part are integers") from None
        newest = segmenter.current_sequence() if segmenter.started else 0
        if msn < 0 or (part is not None and part < 0) or msn > newest + 2:
            raise HttpError(400, "bad_hls_request", "_HLS_msn is too far ahead of the live edge")
        if not await _wait(segmenter, lambda: segmenter.has(msn, part), 3 * segmenter.target_seconds):
            raise HttpError(503, "hls_not_ready", "the requested segment did not appear in time")
    return web.Response(text=segmenter.playlist(), content_type=PLAYLIST_TYPE, headers=NO_CACHE)


async def part(request: web.Request) -> web.Response:
    """An LL-HLS part; the one named by the preload hint is awaited (up to three part durations)."""
    segmenter = _segmenter(request)
    if not segmenter.part or request.match_info["ext"] != EXTENSIONS[segmenter.codec]:
        raise HttpError(404, "segment_not_found", "no such part")
    sequence, index = int(request.match_info["sequence"]), int(request.match_info["part"])
    await _wait(segmenter, lambda: segmenter.get_part(sequence, index) is not None
                or (bool(segmenter.segments) and segmenter.segments[-1].sequence >= sequence),
                3 * (segmenter.part_seconds or 0))
    found = segmenter.get_part(sequence, index)
    if found is None:
        raise HttpError(404, "segment_not_found", "part expired or not cut")
    return web.Response(body=found.data, content_type=SEGMENT_TYPES[segmenter.codec],
                        headers={"Cache-Control": "max-age=60"})


async def segment(request: web.Request) -> web.Response:
    segmenter = _segmenter(request)
    if request.match_info["ext"] != EXTENSIONS[segmenter.codec]:
        raise HttpError(404, "segment_not_found", "wrong segment extension")
    sequence = int(request.match_info["sequence"])
    if segmenter.segment(sequence) is None and segmenter.started and sequence == segmenter.current_sequence():
        # The segment being cut here: another replica behind the same front door may have listed it a moment
        # earlier (each cuts the leader's audio on its own), so it is awaited rather than refused.
        await _wait(segmenter, lambda: segmenter.segment(sequence) is not None, segmenter.target_seconds)
    found = segmenter.segment(sequence)
    if found is None:
        raise HttpError(404, "segment_not_found", "segment expired or not yet cut")
    return web.Response(body=found.data, content_type=SEGMENT_TYPES[segmenter.codec],
                        headers={"Cache-Control": "max-age=60"})


async def init(request: web.Request) -> web.Response:
    """The fMP4 init segment (`EXT-X-MAP`) of an Opus rendition."""
    segmenter = _segmenter(request)
    if segmenter.packaging.init is None:
        raise HttpError(404, "segment_not_found", "this rendition has no init segment (yet)")
    return web.Response(body=segmenter.packaging.init, content_type=INIT_TYPE, headers={"Cache-Control": "max-age=60"})
