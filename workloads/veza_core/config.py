"""Worker configuration, read from the environment the operator (or `veza up`) sets.

Every workload reads the same variables: `veza_operator.wiring.worker_env` computes
them for pods (and `veza up`), and each workload's own are listed with its docs
(docs/api.md, docs/chat-protocol.md, docs/streaming.md). Values that are secrets (database URL, S3 keys) come
from Kubernetes Secrets through ``valueFrom``; JWT public keys come from a
mounted Secret directory (``VEZA_JWT_KEYS_DIR``) so rotations are picked up
without a restart.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, Field


class Settings(BaseModel):
    """What every worker needs to know about its platform and dependencies."""

    platform: str = Field("local", description="Name of the VezaPlatform this worker belongs to")
    namespace: str = Field("default", description="Kubernetes namespace of the platform")
    component: str = Field("worker", description="api, chat or stream")
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    public_url: str = Field("http://localhost:8080", description="Base URL end clients use (the Ingress)")

    database_url: str | None = None
    # The read endpoint for reads that may lag (docs/deploy.md, "Read replicas"): a full URI, or a host[:port]
    # replacing the primary's in database_url. Neither: every read goes to the primary.
    database_read_url: str | None = None
    database_read_host: str | None = None
    database_read_max_lag_seconds: float = Field(5.0, gt=0)
    redis_url: str | None = None
    nats_url: str | None = None

    s3_endpoint: str | None = Field(None, description="S3 endpoint URL; empty means AWS's default")
    s3_bucket: str = "veza"
    s3_region: str = "us-east-1"

    jwt_issuer: str = "http://localhost:8080"
    jwt_keys_dir: Path | None = Field(None, description="Directory of the JWT key Secret (jwks.json inside)")
    jwt_algorithms: tuple[str, ...] = ("EdDSA", "RS256")

    # The custom resource this worker serves (chat: a ChatRoom; stream: a StreamChannel).
    resource_name: str | None = None
    resource_spec: dict[str, Any] = Field(default_factory=dict)

    # Proxies in front of the workers that append to X-Forwarded-For (the front door: the operator sets
    # ingress.trustedProxies, default 1); 0 trusts no header: the peer is the client.
    trusted_proxies: int = Field(0, ge=0, le=10)

    shutdown_grace_seconds: float = 20.0
    log_level: str = "INFO"
    # uvloop unless told otherwise: the standard loop is there to tell a loop's bug from ours.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            key = f"VEZA_{name.upper()}"
            if key in env and env[key] != "":
                values[name] = env[key]
        if "resource_spec" in values:
            values["resource_spec"] = json.loads(values["resource_spec"])
        if "jwt_algorithms" in values:
            values["jwt_algorithms"] = tuple(a.strip() for a in values["jwt_algorithms"].split(","))
        return cls.model_validate(values)

    def to_env(self) -> dict[str, str]:
        """The inverse of :meth:`from_env` for the fields that differ from the defaults."""
        env: dict[str, str] = {}
        for name, value in self.model_dump(exclude_defaults=True).items():
            if value is None:
                continue
            if name == "resource_spec":
                env["VEZA_RESOURCE_SPEC"] = json.dumps(value, separators=(",", ":"), sort_keys=True)
            elif name == "jwt_algorithms":
                env["VEZA_JWT_ALGORITHMS"] = ",".join(value)
            else:
                env[f"VEZA_{name.upper()}"] = str(value)
        return env
