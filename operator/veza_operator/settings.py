"""The operator's settings: read from the environment once, in `cli.run`, and passed down.

The command-line flags override the variables of the same meaning (`--peering` and VEZA_PEERING...);
everything else is tuning that only the environment sets. kopf's handlers reach these settings
through the `Runtime` in kopf's memo. (Named `Settings`: kopf has its own `OperatorSettings`.)
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Ingress annotations that carry controller configuration (ingress-nginx snippets, external auth,
# mirroring, redirects, extra host names): a resource author must not reach the controller through them.
DENIED_ANNOTATIONS = ("*snippet*", "*auth-url*", "*auth-signin*", "*auth-tls-match-cn*", "*mirror-*",
                      "*permanent-redirect*", "*temporal-redirect*", "*server-alias*")


class Settings(BaseModel):
    """Every knob of `veza operator`, with the environment variable that sets it."""

    model_config = ConfigDict(frozen=True)

    peering: str = Field("veza", description="VEZA_PEERING: replicas with the same name keep one active")
    liveness_port: int = Field(8080, description="VEZA_LIVENESS_PORT: /healthz port (0: off)")
    metrics_port: int = Field(9090, description="VEZA_METRICS_PORT: Prometheus port (0: off)")
    bind: str = Field("0.0.0.0", description="VEZA_BIND: address of the liveness and metrics ports")
    log_level: str = Field("INFO", description="VEZA_LOG_LEVEL")
    event_loop: Literal["uvloop", "asyncio"] = Field("uvloop", description="VEZA_EVENT_LOOP: the loop kopf runs on, "
                                                     "as the workers (asyncio: the standard one)")
    # Watches can stall silently (kopf's most reported problem): they are bounded on both ends.
    watch_server_timeout: int = Field(270, description="VEZA_WATCH_SERVER_TIMEOUT: seconds a watch lasts")
    peering_lifetime: int = Field(20, description="VEZA_PEERING_LIFETIME: seconds before a silent replica "
                                                  "is forgotten")
    reconcile_workers: int = Field(16, ge=1, description="VEZA_RECONCILE_WORKERS: reconciles run at once")
    resync_seconds: float = Field(600.0, gt=0, description="VEZA_RESYNC_SECONDS: period of the full resync")
    capability_ttl: float = Field(60.0, ge=0, description="VEZA_CAPABILITY_TTL: seconds the answer to 'is "
                                                          "this optional API served?' is trusted")

    # The API's directory follows the rooms and channels (directory.py). The URL of a platform's API: a
    # template of {platform} and {namespace}; the in-cluster Service by default, another address for an
    # operator run outside the cluster.
    directory_url: str = Field("http://{platform}-api.{namespace}.svc",
                               description="VEZA_DIRECTORY_URL: URL template of a platform's API")
    directory_relist_seconds: float = Field(600.0, gt=0, description="VEZA_DIRECTORY_RELIST_SECONDS: how often "
                                            "the operator lists a platform's directory again (removes rows whose "
                                            "resource is gone, puts back rows changed by hand)")
    directory_timeout_seconds: float = Field(10.0, gt=0, description="VEZA_DIRECTORY_TIMEOUT_SECONDS: timeout of "
                                             "one request to a platform's API")
    directory_retry_max_seconds: float = Field(60.0, gt=0, description="VEZA_DIRECTORY_RETRY_MAX_SECONDS: "
                                               "longest wait between attempts to reach a platform's API")
    # Cheap to read often: the answer lists only rooms with sockets or traffic, and promotion waits on it.
    load_interval_seconds: float = Field(2.0, gt=0, description="VEZA_LOAD_INTERVAL_SECONDS: how often the "
                                         "operator reads a platform's rooms' load (the autopilot's input)")

    # Where the operator's own pods run (the chart sets both): each platform's NetworkPolicies admit them to the
    # API pods, for the directory. Unset (an operator outside the cluster): no such policy.
    operator_namespace: str = Field("", description="VEZA_OPERATOR_NAMESPACE: namespace of the operator's pods")
    operator_pod_labels: tuple[str, ...] = Field(
        (), description="VEZA_OPERATOR_POD_LABELS: comma-separated key=value labels of the operator's pods")

    # What a resource author may make the operator do (docs/operator.md, "What the operator refuses").
    allowed_image_repositories: tuple[str, ...] = Field(
        ("ghcr.io/veza-platform/veza",),
        description="VEZA_ALLOWED_IMAGE_REPOSITORIES: comma-separated image repositories workers may run; an "
                    "entry ending in / allows every repository under it")
    ingress_annotations_allowed: tuple[str, ...] = Field(
        ("*",), description="VEZA_INGRESS_ANNOTATIONS_ALLOWED: comma-separated glob patterns of the annotation "
                            "keys a platform may set on its Ingresses")
    ingress_annotations_denied: tuple[str, ...] = Field(
        DENIED_ANNOTATIONS, description="VEZA_INGRESS_ANNOTATIONS_DENIED: comma-separated glob patterns refused "
                                        "even when allowed")

    relay_denied_networks: tuple[str, ...] = Field(
        (), description="VEZA_RELAY_DENIED_NETWORKS: comma-separated CIDRs no relay channel may reach, whatever "
                        "its allowedHosts lists (e.g. the cluster's pod and service ranges); the cloud metadata "
                        "addresses are always refused")

    @field_validator("relay_denied_networks")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(ipaddress.ip_network(entry, strict=False)) for entry in value)  # ValueError names it

    @field_validator("allowed_image_repositories", "ingress_annotations_allowed", "ingress_annotations_denied",
                     "relay_denied_networks", "operator_pod_labels", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("operator_pod_labels")
    @classmethod
    def _labels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for label in value:
            if not label.partition("=")[0] or "=" not in label:
                raise ValueError(f"{label!r} is not key=value")
        return value

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values = {name: env[f"VEZA_{name.upper()}"] for name in cls.model_fields
                  if env.get(f"VEZA_{name.upper()}", "") != ""}
        return cls.model_validate(values)
