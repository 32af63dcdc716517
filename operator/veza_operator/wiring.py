"""How a worker is wired to its platform: the environment every worker process gets.

One function computes it for the operator (which renders secret values as
`secretKeyRef`s in pod specs) and for `veza up` (which resolves them from its
local secrets), so a worker runs the same way on a laptop and in a cluster.
The variables are read back by `veza_core.config.Settings.from_env`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veza_core.specs import (
    ChatRoomSpec,
    ChatRoomWorkerSpec,
    StreamChannelSpec,
    StreamChannelWorkerSpec,
    operator_only_fields,
)

from .models import LocalObjectRef, SecretKeyRef, VezaPlatformSpec

JWT_KEYS_DIR = "/var/run/veza/jwt"
NATS_DIR = "/var/run/veza/nats"
NATS_CREDS_FILE = f"{NATS_DIR}/user.creds"
NATS_CA_FILE = f"{NATS_DIR}/ca.crt"
HTTP_PORT = 8080
COMPONENTS = ("api", "chat", "stream")


@dataclass(frozen=True)
class SecretValue:
    """An environment value that lives in a Secret."""

    secret: str
    key: str


@dataclass(frozen=True)
class SecretFile:
    """An environment value that is the path of a file holding a Secret's key (mounted read-only in pods).

    For what a client library reads from a file (a NATS .creds file, a CA certificate), and so that
    the value stays out of the process environment.
    """

    secret: str
    key: str
    path: str


EnvValue = str | SecretValue | SecretFile


def public_url(spec: VezaPlatformSpec) -> str:
    """Where end clients reach the platform; also the JWT issuer, so the scheme is declared, never guessed."""
    https = spec.ingress.tls is not None or (spec.gateway is not None and spec.gateway.https)
    scheme = "https" if https else "http"
    return f"{scheme}://{spec.ingress.host}"


def keys_secret_name(platform: str, spec: VezaPlatformSpec) -> str:
    return spec.auth.keysSecretName or f"{platform}-jwt-keys"


# Spec fields that only the operator reads: keeping them out of the pods' environment means
# scaling (by hand or by the HPA) or changing the deletion policy never restarts a worker.
# (replicas, autoscaling, resources, deletionPolicy, platformRef, a room's placement: what the CR specs add to
# the worker specs.)
OPERATOR_ONLY_FIELDS = (operator_only_fields(ChatRoomWorkerSpec, ChatRoomSpec)
                        | operator_only_fields(StreamChannelWorkerSpec, StreamChannelSpec))


def worker_spec(raw_spec: dict[str, Any] | None) -> dict[str, Any]:
    """The part of a ChatRoom / StreamChannel spec its workers receive (VEZA_RESOURCE_SPEC)."""
    return {k: v for k, v in (raw_spec or {}).items() if k not in OPERATOR_ONLY_FIELDS}


def database_ref(spec: VezaPlatformSpec, component: str, *, schema_owner: bool = False) -> SecretValue:
    """The component's own PostgreSQL URI when the platform names one, else the schema owner's."""
    postgres = spec.connections.postgres
    own: SecretKeyRef | None = None
    if component in COMPONENTS and not schema_owner:
        own = getattr(postgres.components, component)
    ref = own or postgres.owner_uri
    return SecretValue(ref.name, ref.key)


def database_read_env(spec: VezaPlatformSpec) -> dict[str, EnvValue]:
    """Where reads that tolerate staleness go: a replica's full URI, or with a CloudNativePG cluster the host of
    its `-ro` Service (the worker keeps the credentials of its own URI and swaps the host). Empty: the primary."""
    postgres = spec.connections.postgres
    read = postgres.read
    if read is None:
        return {}
    env: dict[str, EnvValue] = {"VEZA_DATABASE_READ_MAX_LAG_SECONDS": str(read.maxLagSeconds)}
    if read.uriSecretRef is not None:
        env["VEZA_DATABASE_READ_URL"] = SecretValue(read.uriSecretRef.name, read.uriSecretRef.key)
    elif postgres.cluster is not None:
        env["VEZA_DATABASE_READ_HOST"] = postgres.cluster.read_host
    return env


def worker_env(platform: str, namespace: str, spec: VezaPlatformSpec, component: str,
               resource_name: str | None = None, resource_spec: dict[str, Any] | None = None,
               *, schema_owner: bool = False) -> dict[str, EnvValue]:
    """The environment of one worker: platform connections plus the room or channel it serves.

    `schema_owner`: the migration Job's environment, with the URI of the role that owns the schema
    (`uriSecretRef`, or the CloudNativePG cluster's application Secret) whatever the component's own URI.
    """
    conn = spec.connections
    env: dict[str, EnvValue] = {
        "VEZA_PLATFORM": platform,
        "VEZA_NAMESPACE": namespace,
        "VEZA_COMPONENT": component,
        "VEZA_HTTP_PORT": str(HTTP_PORT),
        "VEZA_PUBLIC_URL": public_url(spec),
        "VEZA_JWT_ISSUER": public_url(spec),
        "VEZA_JWT_KEYS_DIR": JWT_KEYS_DIR,
        "VEZA_DATABASE_URL": database_ref(spec, component, schema_owner=schema_owner),
        "VEZA_NATS_URL": conn.nats.url,
        "VEZA_S3_BUCKET": conn.s3.bucket,
        "VEZA_S3_REGION": conn.s3.region,
        # Behind the front door every peer is a proxy: the client's address is this many hops from
        # the end of X-Forwarded-For.
        "VEZA_TRUSTED_PROXIES": str(spec.ingress.trustedProxies),
    }
    if not schema_owner:  # migrations read what they just wrote: the primary only
        env.update(database_read_env(spec))
    if component == "api" and conn.postgres.analytics is not None:
        # The API's analytics consumer writes there; the migration Job (schema owner, an API process) migrates it.
        ref = conn.postgres.analytics.uriSecretRef
        env["VEZA_ANALYTICS_DATABASE_URL"] = SecretValue(ref.name, ref.key)
    if schema_owner:
        # The migration Job grants each component's own role what it needs (veza_core.grants); `veza migrate`
        # uses only the user name of these URIs.
        for name in COMPONENTS:
            own = getattr(conn.postgres.components, name)
            if own is not None:
                env[f"VEZA_DATABASE_URL_{name.upper()}"] = SecretValue(own.name, own.key)
    if conn.nats.credentialsSecretRef is not None:
        creds = conn.nats.credentialsSecretRef
        env["VEZA_NATS_CREDS"] = SecretFile(creds.name, creds.key, NATS_CREDS_FILE)
    nats_user: LocalObjectRef | None = getattr(conn.nats.users, component) if component in COMPONENTS else None
    if nats_user is not None:
        env["VEZA_NATS_USER"] = SecretValue(nats_user.name, "user")
        env["VEZA_NATS_PASSWORD"] = SecretValue(nats_user.name, "password")
    if conn.nats.tls.caSecretRef is not None:
        ca = conn.nats.tls.caSecretRef
        env["VEZA_NATS_TLS_CA"] = SecretFile(ca.name, ca.key, NATS_CA_FILE)
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
        env["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
        env["OTEL_TRACES_SAMPLER_ARG"] = str(spec.observability.traceSamplingRatio)
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


def secrets_of(env: dict[str, EnvValue]) -> set[str]:
    """Names of the Secrets an environment takes values or files from."""
    return {v.secret for v in env.values() if isinstance(v, SecretValue | SecretFile)}


def secrets_referenced(spec: VezaPlatformSpec) -> set[str]:
    """Names of the Secrets a platform's workers cannot start without (every component, and the migration Job)."""
    names = secrets_of(worker_env("p", "ns", spec, "api", schema_owner=True))
    for component in COMPONENTS:
        names |= secrets_of(worker_env("p", "ns", spec, component))
    return names


def secret_files(env: dict[str, EnvValue]) -> list[SecretFile]:
    return sorted((v for v in env.values() if isinstance(v, SecretFile)), key=lambda f: f.path)


def to_k8s_env(env: dict[str, EnvValue]) -> list[dict[str, Any]]:
    """Pod-spec `env` entries, secrets as `secretKeyRef`s, secret files as their paths (mounted by the pod spec)."""
    out: list[dict[str, Any]] = []
    for name in sorted(env):
        value = env[name]
        if isinstance(value, SecretValue):
            out.append({"name": name, "valueFrom": {"secretKeyRef": {"name": value.secret, "key": value.key}}})
        elif isinstance(value, SecretFile):
            out.append({"name": name, "value": value.path})
        else:
            out.append({"name": name, "value": value})
    return out


def resolve_env(env: dict[str, EnvValue], secrets: dict[str, dict[str, str]],
                files_dir: Path | None = None) -> dict[str, str]:
    """Plain environment for a local process, secret values looked up in `secrets`.

    Secret files are written (owner-only) under `files_dir`, which they need.
    """
    resolved: dict[str, str] = {}
    for name, value in env.items():
        if isinstance(value, SecretValue | SecretFile):
            try:
                text = secrets[value.secret][value.key]
            except KeyError:
                raise KeyError(f"secret {value.secret!r} has no key {value.key!r}") from None
            if isinstance(value, SecretValue):
                resolved[name] = text
                continue
            if files_dir is None:
                raise ValueError(f"{name} names a file: a directory for secret files is needed")
            path = files_dir / value.path.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            path.touch(mode=0o600)
            path.write_text(text)
            resolved[name] = str(path)
        else:
            resolved[name] = value
    return resolved
