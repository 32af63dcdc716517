"""A live source received by a follower, carried on to the leader, which holds the live source.

The follower streams the body to the leader's URL (from the leader lock), marked as forwarded
so the leader forwards it nowhere else. If the leader goes away mid-broadcast, the rest goes to
the next leader: `SourceStream` can resume on a new decoder.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp import StreamReader

from . import ogg

log = logging.getLogger(__name__)

FORWARDED = "X-Veza-Forwarded-By"
# Headers of a source request that the leader needs to see too.
FORWARD_HEADERS = ("Authorization", "Content-Type", "Ice-Name", "Ice-Description", "Ice-Genre", "Ice-Url")


def headers_for_leader(headers: Mapping[str, str], identity: str,
                       names: tuple[str, ...] = FORWARD_HEADERS) -> dict[str, str]:
    """The request's headers the leader needs, marked as forwarded (the leader forwards it nowhere else)."""
    return {**{h: headers[h] for h in names if h in headers}, FORWARDED: identity}


class LeaderLost(Exception):
    """The leader a source was forwarded to went away (or stepped down) during the broadcast."""


class SourceStream:
    """A source client's bytes, resumable on another decoder: when the leader taking them is lost mid-broadcast,
    what follows goes to the next leader (or to this replica, if it is elected), led by the stream's Ogg header
    pages, which a new decoder needs first (MP3 decoders find the next frame by themselves)."""

    def __init__(self, body: StreamReader, fmt: str) -> None:
        self.body = body
        self.headers = ogg.HeaderPages() if fmt == "ogg" else None
        self.received = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.received and self.headers is not None and self.headers.data:
            yield bytes(self.headers.data)  # resumed: a new decoder starts here
        async for data in self.body.iter_any():
            self.received += len(data)
            if self.headers is not None:
                self.headers.feed(data)
            yield data


async def to_leader(leader: str, path: str, headers: dict[str, str], stream: SourceStream
                    ) -> tuple[int, bytes, str]:
    """Stream a live source to `path` on the leader: its answer (status, body, content type), or LeaderLost."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=3, sock_read=None)
    log.info("live source forwarded to the leader", extra={"leader": leader})
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.put(
                f"{leader}{path}", data=stream.chunks(), headers=headers) as resp:
            answer = await resp.read()
    except (aiohttp.ClientError, OSError) as exc:
        raise LeaderLost(str(exc)) from exc
    if resp.status == 503 and b'"not_leader"' in answer:
        raise LeaderLost("the replica is no longer the leader")
    return resp.status, answer, resp.content_type
