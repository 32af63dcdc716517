"""Settings of the stream worker: the shared ones plus what only the stream worker reads.

Read once, in `cli.run`, from the same `VEZA_<FIELD>` environment variables as every worker
(`stream_metaint` is `VEZA_STREAM_METAINT`, `source_password` is `VEZA_SOURCE_PASSWORD`), plus
three under the names Kubernetes and the AWS SDKs give them (`POD_IP`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`); CLI flags override some; then passed down: nothing else in the
package reads the environment.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping

from pydantic import Field, ValidationInfo, field_validator

from veza_core.bus import NatsAuth
from veza_core.config import Settings

# Seconds of audio collected before each write to a listener. A listener costs the worker about one send call per
# write, most of it the kernel's: two writes a second cost half of four, and players, which start with the 2 s burst,
# hear no difference (source to listener stays within a second).
WRITE_INTERVAL = 0.5

# Fields read from these variables rather than VEZA_<FIELD>.
UNPREFIXED = {"pod_ip": "POD_IP", "aws_access_key_id": "AWS_ACCESS_KEY_ID",
              "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY"}


MIN_SOURCE_PASSWORD = 12
# Tuning values kept within what works (out-of-range values are brought back, not refused).
CLAMPED: dict[str, tuple[float, float]] = {
    "stream_relay_max_backoff": (0.1, math.inf),
    "stream_recording_seconds": (1.0, 3600.0),
    "stream_ll_hls_part": (0.0, math.inf),
    "stream_write_interval": (0.02, 1.0),
}


class StreamSettings(Settings, NatsAuth):
    component: str = "stream"
    # Stream workers take traffic from the front door only (the platform's NetworkPolicies): one proxy hop.
    trusted_proxies: int = Field(1, ge=0, le=10)

    # ICY metadata interval in bytes.
    stream_metaint: int = 16000
    # Seconds a leader's Redis lock lives without renewal.
    stream_leader_ttl: float = 3.0
    # Longest wait between relay reconnections (at least 0.1 s).
    stream_relay_max_backoff: float = 30.0
    # Seconds of audio per recording file (1 s to an hour).
    stream_recording_seconds: float = 60.0
    # LL-HLS part duration for channels whose spec sets no partDurationSeconds; 0 leaves them on plain HLS.
    stream_ll_hls_part: float = 0.0
    # Seconds of audio collected before each write to listeners (0.02 to 1).
    stream_write_interval: float = WRITE_INTERVAL
    # Connections the kernel queues for the worker to accept (listen backlog; Linux caps it at net.core.somaxconn).
    # aiohttp's default of 128 overflows in a rush of listeners (a whole audience arriving when a show starts) and
    # every connection past it waits for its client's SYN to be sent again, 1 s later.
    stream_listen_backlog: int = Field(4096, ge=1, le=65535)
    # Track uploads processed at once by this replica (each holds one core transcoding and up to 100 MiB plus its
    # renditions in temporary files); beyond it, 503 `uploads_busy` with Retry-After.
    stream_max_uploads: int = Field(1, ge=1)
    # Networks no relay may reach whatever a channel's allowedHosts lists (comma-separated CIDRs): the platform
    # engineer's deny list (the operator's VEZA_RELAY_DENIED_NETWORKS), e.g. the cluster's pod and service ranges.
    stream_relay_denied_networks: str = ""
    # This replica's URL for the others; unset: derived from the listen address (or pod_ip).
    stream_advertise_url: str | None = None
    # The live source password (Icecast's); unset: broadcasters need a token.
    source_password: str | None = Field(None, repr=False)

    pod_ip: str | None = None
    aws_access_key_id: str | None = Field(None, repr=False)
    aws_secret_access_key: str | None = Field(None, repr=False)

    @field_validator("source_password")
    @classmethod
    def _strong_enough(cls, value: str | None) -> str | None:
        # Five guesses per address, then one a minute (access.py): at 12 characters or more a
        # password is out of reach at that pace; a short one is not.
        if value is not None and len(value) < MIN_SOURCE_PASSWORD:
            raise ValueError(f"the source password must have at least {MIN_SOURCE_PASSWORD} characters")
        return value

    @field_validator("stream_relay_denied_networks")
    @classmethod
    def _networks(cls, value: str) -> str:
        for entry in filter(None, (e.strip() for e in value.split(","))):
            ipaddress.ip_network(entry, strict=False)  # ValueError names the entry
        return value

    @property
    def relay_denied_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(e.strip(), strict=False) for e in self.stream_relay_denied_networks.split(",")
                if e.strip()]

    @field_validator(*CLAMPED)
    @classmethod
    def _clamp(cls, value: float, info: ValidationInfo) -> float:
        low, high = CLAMPED[info.field_name or ""]
        return min(max(value, low), high)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StreamSettings:
        env = os.environ if env is None else env
        prefixed = {f"VEZA_{field.upper()}" for field in UNPREFIXED}
        settings = super().from_env({k: v for k, v in env.items() if k not in prefixed})
        assert isinstance(settings, StreamSettings)  # from_env builds the class it is called on
        return settings.model_copy(update={field: env.get(name) or None for field, name in UNPREFIXED.items()})

    def with_overrides(self, **values: object) -> StreamSettings:
        """These settings with the given fields replaced (None: left as is), validated like the environment's."""
        given = {name: value for name, value in values.items() if value is not None}
        return self.model_validate({**self.model_dump(), **given}) if given else self
