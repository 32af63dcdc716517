"""Settings of the chat worker: the shared ones plus what only chat reads.

Read once, in `cli.run`, from the same `VEZA_<FIELD>` environment variables as every worker
(`Settings.from_env` walks the model's fields, so `chat_migrate` is `VEZA_CHAT_MIGRATE`), then
passed down: nothing else in the package reads the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, field_validator

from veza_core.bus import NatsAuth
from veza_core.config import Settings


class ChatSettings(Settings, NatsAuth):
    component: str = "chat"

    # Apply database migrations at start (a migration Job does it when off; `--no-migrate` too).
    chat_migrate: bool = True
    # Presence entries expire after this long without a heartbeat; heartbeats run every third of it.
    chat_presence_ttl_seconds: float = 15.0
    # Above this many present users, join/leave frames are not broadcast (clients ask for the list).
    chat_presence_events_max_users: int = 200
    # How often retention runs (when the room's spec asks for it).
    chat_retention_interval_seconds: float = 60.0
    # How long the API's word on sessions and roles is kept to refuse tokens issued before it: longer than
    # service tokens live (the API's VEZA_SERVICE_TOKEN_TTL_SECONDS, 300 by default).
    chat_revocation_memory_seconds: float = 3600.0
    # A pool worker releases a room after this long without a socket or a request (its next request opens it again).
    chat_pool_idle_seconds: float = 60.0
    # Connections the kernel queues for the worker to accept (listen backlog; Linux caps it at net.core.somaxconn).
    # When a worker restarts, its clients all reconnect at once (to its replacement or the other replicas): past
    # aiohttp's default of 128 their SYNs are dropped, and each one's kernel sends it again 1 s later, then after 2,
    # 4, 8, 16 s more, so the last clients of a storm waited half a minute for a worker that was idle by then.
    chat_listen_backlog: int = Field(4096, ge=1, le=65535)

    @field_validator("chat_migrate", mode="before")
    @classmethod
    def _only_zero_turns_off(cls, value: Any) -> Any:
        # The variable was documented as 1/0: any value but "0" keeps migrations on, as before.
        return value != "0" if isinstance(value, str) else value

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ChatSettings:
        settings = super().from_env(env)
        assert isinstance(settings, ChatSettings)  # from_env builds the class it is called on
        return settings
