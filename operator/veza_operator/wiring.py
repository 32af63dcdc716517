"""How a worker is wired to its platform: the environment every worker process gets.

One function computes it for the operator (which renders secret values as
`secretKeyRef`s in pod specs) and for `veza up` (which resolves them from its
local secrets), so a worker runs the same way on a laptop and in a cluster.
The variables are read back by `veza_core.config.Settings.from_env`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from veza_core.specs import (
    ChatRoomSpec,
    ChatRoomWorkerSpec,
    StreamChannelSpec,
    StreamChannelWorkerSpec,
    operator_only_fields,
)

from .models import VezaPlatformSpec

JWT_KEYS_DIR = "/var/run/veza/jwt"
HTTP_PORT = 8080


@dataclass(frozen=True)
class SecretValue:
    """An environment value that lives in a Secret."""

    secret: str
    key: str


EnvValue = str | SecretValue


def public_url(spec: VezaPlatformSpec) -> str:
    """Where end clients reach the platform; also the JWT issuer, so the scheme is declared, never guessed."""
    https = spec.ingress.tls is not None or (spec.gateway is not None and spec.gateway.https)
    scheme = "https" if https else "http"
    return f"{scheme}://{spec.ingress.host}"


def keys_secret_name(platform: str, spec: VezaPlatformSpec) -> str:
    return spec.auth.keysSecretName or f"{platform}-jwt-keys"


# Spec fields that only the operator reads: keeping them out of the pods' environment means
# scaling (by hand or by the HPA) or changing the deletion policy never restarts a worker.
# (replicas, autoscaling, resources, deletionPolicy, platformRef: what the CR specs add to the worker specs.)
OPERATOR_ONLY_FIELDS = (operator_only_fields(ChatRoomWorkerSpec, ChatRoomSpec)
                        | operator_only_fields(StreamChannelWorkerSpec, StreamChannelSpec))


def worker_spec(raw_spec: dict[str, Any] | None) -> dict[str, Any]:
    """The part of a ChatRoom / StreamChannel spec its workers receive (VEZA_RESOURCE_SPEC)."""
    return {k: v for k, v in (raw_spec or {}).items() if k not in OPERATOR_ONLY_FIELDS}


def worker_env(platform: str, namespace: str, spec: VezaPlatformSpec, component: str,
               resource_name: str | None = None, resource_spec: dict[str, Any] | None = None,
               ) -> dict[str, EnvValue]:
    """The environment of one worker: platform connections plus the room or channel it serves."""
    conn = spec.connections
    env: dict[str, EnvValue] = {
        "VEZA_PLATFORM": platform,
        "VEZA_NAMESPACE": namespace,
        "VEZA_COMPONENT": component,
        "VEZA_HTTP_PORT": str(HTTP_PORT),
        "VEZA_PUBLIC_URL": public_url(spec),
        "VEZA_JWT_ISSUER": public_url(spec),
        "VEZA_JWT_KEYS_DIR": JWT_KEYS_DIR,
        "VEZA_DATABASE_URL": SecretValue(conn.postgres.uriSecretRef.name, conn.postgres.uriSecretRef.key),
        "VEZA_NATS_URL": conn.nats.url,
        "VEZA_S3_BUCKET": conn.s3.bucket,
        "VEZA_S3_REGION": conn.s3.region,
    }
    if conn.redis.urlSecretRef is not None:
        env["VEZA_REDIS_URL"] = SecretValue(conn.redis.urlSecretRef.name, conn.redis.urlSecretRef.key)
    elif conn.redis.url:
        env["VEZA_REDIS_URL"] = conn.redis.url
    if conn.s3.endpoint:
        env["VEZA_S3_ENDPOINT"] = conn.s3.endpoint
    if conn.s3.credentialsSecretRef is not None:
        env["AWS_ACCESS_KEY_ID"] = SecretValue(conn.s3.credentialsSecretRef.name, "AWS_ACCESS_KEY_ID")
        env["AWS_SECRET_ACCESS_KEY"] = SecretValue(conn.s3.credentialsSecretRef.name, "AWS_SECRET_ACCESS_KEY")
    if spec.observability.otlpEndpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = spec.observability.otlpEndpoint
        env["OTEL_SERVICE_NAME"] = f"veza-{component}"
    if component == "api":
        # Names as veza_api.settings reads them.
        env["VEZA_ACCESS_TTL_SECONDS"] = str(spec.auth.accessTokenTTLSeconds)
        env["VEZA_REFRESH_TTL_SECONDS"] = str(spec.auth.refreshTokenTTLSeconds)
        if spec.auth.oidc is not None:
            env["VEZA_OIDC_ISSUER"] = spec.auth.oidc.issuerURL
            env["VEZA_OIDC_CLIENT_ID"] = spec.auth.oidc.clientID
            ref = spec.auth.oidc.clientSecretRef
            env["VEZA_OIDC_CLIENT_SECRET"] = SecretValue(ref.name, ref.key)
    if component == "chat":
        # The schema is changed by the migration Job (or `veza up`'s migration step) only: a worker
        # that may alter it holds more privilege than serving a room needs.
        env["VEZA_CHAT_MIGRATE"] = "0"
    password_ref = ((resource_spec or {}).get("source") or {}).get("passwordSecretRef")
    if component == "stream" and password_ref:
        env["VEZA_SOURCE_PASSWORD"] = SecretValue(password_ref["name"], password_ref["key"])
    if resource_name is not None:
        env["VEZA_RESOURCE_NAME"] = resource_name
        env["VEZA_RESOURCE_SPEC"] = json.dumps(worker_spec(resource_spec), separators=(",", ":"), sort_keys=True)
    return env


def secrets_referenced(spec: VezaPlatformSpec) -> set[str]:
    """Names of the Secrets a platform's workers cannot start without."""
    env = worker_env("p", "ns", spec, "api")
    return {v.secret for v in env.values() if isinstance(v, SecretValue)}


def to_k8s_env(env: dict[str, EnvValue]) -> list[dict[str, Any]]:
    """Pod-spec `env` entries, secrets as `secretKeyRef`s."""
    out: list[dict[str, Any]] = []
    for name in sorted(env):
        value = env[name]
        if isinstance(value, SecretValue):
            out.append({"name": name, "valueFrom": {"secretKeyRef": {"name": value.secret, "key": value.key}}})
        else:
            out.append({"name": name, "value": value})
    return out


def resolve_env(env: dict[str, EnvValue], secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """Plain environment for a local process, secret values looked up in `secrets`."""
    resolved: dict[str, str] = {}
    for name, value in env.items():
        if isinstance(value, SecretValue):
            try:
                resolved[name] = secrets[value.secret][value.key]
            except KeyError:
                raise KeyError(f"secret {value.secret!r} has no key {value.key!r}") from None
        else:
            resolved[name] = value
    return resolved
