"""Settings of the API worker: the shared ones plus what only the API needs.

Read from the same `VEZA_<FIELD>` environment variables as every worker
(`Settings.from_env` walks the model's fields, so a subclass just works).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator

from veza_core.bus import NatsAuth
from veza_core.config import Settings


class ApiSettings(Settings, NatsAuth):
    component: str = "api"

    # Browsers may call the API from these origins (comma-separated; "*" for any).
    cors_origins: str = ""
    # Bodies of JSON requests; track uploads have their own limit.
    max_body_bytes: int = 64 * 1024
    max_track_bytes: int = 50 * 1024 * 1024
    max_track_seconds: float = 4 * 3600
    max_concurrent_uploads: int = Field(2, ge=1, le=64)  # per process: each holds a temp file and ~16 MiB

    access_ttl_seconds: int = 900
    service_token_ttl_seconds: int = 300
    refresh_ttl_seconds: int = 30 * 24 * 3600
    magic_link_ttl_seconds: int = 900

    # argon2id at OWASP's minimum (19 MiB, 2 passes, 1 lane): ~30 ms per hash on
    # one core, which bounds a login flood by CPU before the rate limits kick in.
    argon2_time_cost: int = 2
    argon2_memory_kib: int = 19 * 1024
    argon2_parallelism: int = 1

    # How many proxies (the Ingress) sit in front of us: the client IP is that many
    # hops from the end of X-Forwarded-For. 0 means trust no header.
    rate_ip_per_second: float = 50.0
    rate_ip_burst: float = 100.0
    rate_user_per_second: float = 20.0
    rate_user_burst: float = 40.0
    # How long a replica trusts, without asking Redis, that a session it saw active still is: revocations reach
    # every replica at once as a notice over Redis (docs/api.md#sessions); this bounds a notice lost. 0: ask
    # Redis on every request.
    session_cache_seconds: float = Field(2.0, ge=0, le=60)
    # Logins and magic-link requests, per client IP and per account.
    rate_login_per_minute: float = 10.0
    rate_login_burst: float = 5.0

    # The account of this email becomes a platform admin once its address is proven (a confirmed
    # registration, a magic link, or OIDC with email_verified).
    bootstrap_admin_email: str | None = None

    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_from: str = "veza@localhost"
    smtp_starttls: bool = False
    # TLS from the first byte (SMTPS, usually port 465) instead of STARTTLS.
    smtp_implicit_tls: bool = False
    # Either way the server's certificate and name are verified, against the system's CAs or this bundle.
    smtp_ca_file: str | None = None
    smtp_username: str | None = None
    smtp_password: str | None = None
    # Local development (`veza up`): each mail is written to this directory as a file instead of sent.
    mail_dir: str | None = None

    # The operator's credential for the directory endpoints only (PUT/DELETE/GET /api/v1/admin/{rooms|channels}):
    # on a cluster the operator keeps the directory equal to the ChatRooms and StreamChannels with it. Unset: only
    # platform admins declare.
    directory_token: str | None = Field(None, min_length=32, max_length=256)

    # Analytics (docs/analytics.md): the consumer of the bus's events runs in the API workers (one at a time) unless
    # switched off; its store is this database (schema `analytics`), by default the platform's own.
    analytics: bool = True
    analytics_database_url: str | None = None
    analytics_rescan_seconds: float = Field(30.0, gt=0)  # how often new rooms' streams are looked for

    oidc_issuer: str | None = Field(None, description="OIDC provider's issuer URL (discovery at /.well-known/...)")
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    oidc_redirect_url: str | None = Field(None, description="default: public_url + /api/v1/auth/oidc/callback")
    oidc_scopes: str = "openid email profile"
    oidc_ca_file: str | None = Field(None, description="CA bundle for a provider with a private CA")

    @field_validator("oidc_issuer")
    @classmethod
    def _issuer_over_https(cls, value: str | None) -> str | None:
        # Discovery, keys and the code exchange all come from the issuer: over plain HTTP anyone on
        # the path could hand out keys and sign users in as anyone.
        if value and urlsplit(value).scheme != "https":
            raise ValueError("the OIDC issuer must be an https:// URL")
        return value

    @property
    def cors_origin_set(self) -> frozenset[str]:
        return frozenset(o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip())
