"""NATS and JetStream: one connection per worker that reconnects forever.

Subjects are namespaced per platform so several platforms can share a NATS:
``veza.<platform>.<kind>.<name>.<event>`` (see :func:`subject`).

Credentials (docs/nats.md): a worker's settings carry them (:class:`NatsAuth`, from
``VEZA_NATS_CREDS``, ``VEZA_NATS_USER`` + ``VEZA_NATS_PASSWORD``, ``VEZA_NATS_TLS_CA``). What
arrives from the bus is another pod's word, never trusted as is: consumers validate it
(:func:`parse_json`) and count what they drop with :func:`reject`.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError
from pydantic import BaseModel, Field, ValidationError, model_validator

from .metrics import BUS_REJECTED

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


def subject(platform: str, kind: str, name: str, *event: str) -> str:
    return ".".join(["veza", platform, kind, name, *event])


class NatsAuth(BaseModel):
    """How a worker proves who it is to NATS; a mixin of every worker's settings, so the fields are read
    from VEZA_NATS_CREDS, VEZA_NATS_USER, VEZA_NATS_PASSWORD and VEZA_NATS_TLS_CA like the other settings."""

    nats_creds: Path | None = Field(None, description="A NATS .creds file (user JWT and nkey seed)")
    nats_user: str | None = None
    nats_password: str | None = Field(None, repr=False)
    nats_tls_ca: Path | None = Field(None, description="CA bundle the server's certificate is verified against")

    @model_validator(mode="after")
    def _one_way_in(self) -> NatsAuth:
        if (self.nats_user is None) != (self.nats_password is None):
            raise ValueError("VEZA_NATS_USER and VEZA_NATS_PASSWORD go together")
        if self.nats_creds is not None and self.nats_user is not None:
            raise ValueError("VEZA_NATS_CREDS and VEZA_NATS_USER exclude each other: pick one way to sign in")
        return self


def connect_options(auth: NatsAuth | None) -> dict[str, Any]:
    """nats-py's connect arguments for these credentials (TLS verified against the CA when one is given)."""
    if auth is None:
        return {}
    options: dict[str, Any] = {}
    if auth.nats_creds is not None:
        # Read at every (re)connect by nats-py (signing needs the `nkeys` package): a rotated file is picked up.
        options["user_credentials"] = str(auth.nats_creds)
    if auth.nats_user is not None:
        options["user"], options["password"] = auth.nats_user, auth.nats_password
    if auth.nats_tls_ca is not None:
        context = ssl.create_default_context(cafile=str(auth.nats_tls_ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        options["tls"] = context
    return options


async def connect(url: str, *, name: str, auth: NatsAuth | None = None, no_echo: bool = False) -> Client:
    """Connect with the worker's credentials, then keep reconnecting in the background whenever the server goes
    away. A `tls://` URL (or a server that requires TLS) is verified against `auth.nats_tls_ca`, else the
    system's CAs. `no_echo`: the server does not send this connection what it published itself, for a client that
    subscribes to its own subjects only to hear the others."""

    async def disconnected() -> None:
        log.warning("nats disconnected")

    async def reconnected() -> None:
        log.info("nats reconnected")

    async def error(exc: Exception) -> None:
        log.warning("nats error", extra={"error": repr(exc)})

    client = Client()
    options: dict[str, Any] = {"reconnect_time_wait": 0.5, **connect_options(auth)}  # nats-py types it int
    await client.connect(
        url, name=name, max_reconnect_attempts=-1, connect_timeout=2, allow_reconnect=True, no_echo=no_echo,
        disconnected_cb=disconnected, reconnected_cb=reconnected, error_cb=error, **options,
    )
    return client


async def ensure_stream(js: JetStreamContext, name: str, subjects: list[str], *, max_age: float | None = None,
                        max_msgs: int = -1, max_msgs_per_subject: int = -1, duplicate_window: float = 0) -> None:
    """Create the stream, or update it when its configuration changed (a duplicate window of 0: the server's
    default, 2 minutes, within which a repeated Nats-Msg-Id is dropped)."""
    config = StreamConfig(name=name, subjects=subjects, retention=RetentionPolicy.LIMITS,
                          storage=StorageType.FILE, max_age=max_age, max_msgs=max_msgs,
                          max_msgs_per_subject=max_msgs_per_subject, duplicate_window=duplicate_window)
    try:
        await js.add_stream(config)
    except BadRequestError:
        await js.update_stream(config)


# -- what arrives from the bus ------------------------------------------------------------------
_last_warning: dict[tuple[str, str], float] = {}


def reject(subject_kind: str, reason: str, *, clock: Callable[[], float] = time.monotonic, **details: Any) -> None:
    """Count a message dropped from the bus (veza_bus_rejected_total), with a warning at most once a
    minute per kind and reason: a flood of forged messages must not become a flood of log lines."""
    BUS_REJECTED.labels(subject_kind, reason).inc()
    now = clock()
    key = (subject_kind, reason)
    if now - _last_warning.get(key, -60.0) >= 60.0:
        _last_warning[key] = now
        log.warning("message from the bus dropped",
                    extra={"subject_kind": subject_kind, "reason": reason,
                           **{k: str(v)[:200] for k, v in details.items()}})


def parse_json(model: type[M], data: bytes, *, subject_kind: str, max_bytes: int) -> M | None:
    """`data` as `model`, or None (counted under `subject_kind`) when it is too large, not JSON or not valid."""
    if len(data) > max_bytes:
        reject(subject_kind, "too_large", size=len(data))
        return None
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):
        reject(subject_kind, "malformed")
        return None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        reject(subject_kind, "invalid", error=exc.errors(include_url=False, include_input=False)[:1])
        return None
