"""NATS and JetStream: one connection per worker that reconnects forever.

Subjects are namespaced per platform so several platforms can share a NATS:
``veza.<platform>.<kind>.<name>.<event>`` (see :func:`subject`).
"""

from __future__ import annotations

import logging

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

log = logging.getLogger(__name__)


def subject(platform: str, kind: str, name: str, *event: str) -> str:
    return ".".join(["veza", platform, kind, name, *event])


async def connect(url: str, *, name: str) -> Client:
    """Connect, then keep reconnecting in the background whenever the server goes away."""

    async def disconnected() -> None:
        log.warning("nats disconnected")

    async def reconnected() -> None:
        log.info("nats reconnected")

    async def error(exc: Exception) -> None:
        log.warning("nats error", extra={"error": repr(exc)})

    return await nats.connect(
        url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=2,
        allow_reconnect=True, disconnected_cb=disconnected, reconnected_cb=reconnected, error_cb=error,
    )


async def ensure_stream(js: JetStreamContext, name: str, subjects: list[str], *, max_age: float | None = None,
                        max_msgs: int = -1) -> None:
    """Create the stream, or update it when its configuration changed."""
    config = StreamConfig(name=name, subjects=subjects, retention=RetentionPolicy.LIMITS,
                          storage=StorageType.FILE, max_age=max_age, max_msgs=max_msgs)
    try:
        await js.add_stream(config)
    except BadRequestError:
        await js.update_stream(config)
