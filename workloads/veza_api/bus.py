"""Events the API publishes on NATS for the other workloads (services/events.py, docs/events.md), best effort:
the API works without NATS, it only counts what it could not say.

Built once from the settings and kept on the context; the connection is made in the background and
retried until it succeeds, so a NATS that is down at start delays nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from nats.aio.client import Client
from prometheus_client import Counter
from pydantic import BaseModel, ValidationError

from veza_core import bus, tasks

log = logging.getLogger("veza.api")

PUBLISHED = Counter("veza_api_bus_published_total", "Events published on NATS", ["event"])
PUBLISH_FAILURES = Counter("veza_api_bus_publish_failures_total",
                           "Events not published because NATS was unset, unreachable or refused them", ["event"])


class Publisher:
    def __init__(self, url: str | None, *, name: str = "veza-api", auth: bus.NatsAuth | None = None) -> None:
        self.url = url
        self.name = name
        self.auth = auth
        self.nc: Client | None = None
        self._connecting: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.url:
            self._connecting = asyncio.create_task(self._connect(), name="api-nats-connect")

    async def _connect(self) -> None:
        assert self.url is not None
        while self.nc is None:
            try:
                self.nc = await bus.connect(self.url, name=self.name, auth=self.auth)
            except Exception as exc:  # nats raises several unrelated types; retry whatever it was
                tasks.raise_if_cancelled(exc)
                log.warning("nats connect failed, retrying", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)

    async def connection(self) -> Client | None:
        """The connection, once made (for the API's own subscriptions); None when no NATS is configured."""
        if self._connecting is not None:
            await asyncio.shield(self._connecting)
        return self.nc

    async def publish(self, subject: str, event: str, payload: dict[str, Any]) -> bool:
        """Send `payload` as JSON; False (logged and counted) when it could not be sent now."""
        nc = self.nc
        if nc is None or not nc.is_connected:
            return self._failed(event, subject, "not connected")
        try:
            await nc.publish(subject, json.dumps(payload, separators=(",", ":")).encode())
        except Exception as exc:  # best effort: an event lost must never fail the request that caused it
            return self._failed(event, subject, repr(exc))
        PUBLISHED.labels(event).inc()
        return True

    async def publish_event(self, subject: str, event: str, model: type[BaseModel], **fields: Any) -> bool:
        """Send the catalog's `model` built from `fields`; one that does not validate is not sent (counted and
        logged like an event NATS refused: the request that caused it has succeeded all the same)."""
        try:
            payload = model(**fields).model_dump(mode="json")
        except ValidationError as exc:
            return self._failed(event, subject, f"invalid event: {exc.errors(include_url=False)[:1]}")
        return await self.publish(subject, event, payload)

    def _failed(self, event: str, subject: str, why: str) -> bool:
        PUBLISH_FAILURES.labels(event).inc()
        log.warning("event not published", extra={"subject": subject, "error": why})
        return False

    async def close(self) -> None:
        if self._connecting is not None and not await tasks.stop(self._connecting):
            log.warning("nats connect did not stop")
        if self.nc is not None:
            # close(), not drain(): it flushes what is pending and, unlike drain() while NATS is away and the
            # client reconnects, always ends; the bound keeps a shutdown within its grace either way.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), 2.0)
