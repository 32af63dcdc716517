"""The custom resources' specs as pydantic models: the one source of truth.

`crds.py` turns these into the CRDs' OpenAPI schemas (descriptions, defaults,
enums, bounds and the CEL rules given in `json_schema_extra`); the operator
parses specs with the same models; `veza up` validates CR files with them.
Field names are camelCase, as Kubernetes APIs are.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

GROUP = "veza.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def cel(rule: str, message: str) -> dict[str, Any]:
    return {"rule": rule, "message": message}


def describe_error(exc: ValidationError) -> str:
    """The first problem of a spec, as a status message: "spec.limits.maxMembers: ..."."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    return f"spec.{where}: {err.get('msg', 'invalid')}"


class Model(BaseModel):
    # Unknown fields are dropped by the API server's structural pruning anyway;
    # ignoring them here keeps `veza up` and the operator lenient in the same way.
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# -- shared pieces ---------------------------------------------------------------


class SecretKeyRef(Model):
    """A key of a Secret in the resource's namespace."""

    name: str = Field(description="Name of the Secret.", min_length=1, max_length=253)
    key: str = Field(description="Key inside the Secret.", min_length=1, max_length=253)


class LocalObjectRef(Model):
    name: str = Field(description="Name of the referenced object, in the same namespace.",
                      min_length=1, max_length=63, pattern=DNS_LABEL)


class Resources(Model):
    """Compute resources of one worker container (Kubernetes quantities)."""

    requests: dict[str, str] = Field(default_factory=lambda: {"cpu": "100m", "memory": "128Mi"},
                                     description="Minimum resources reserved, e.g. {cpu: 100m, memory: 128Mi}.")
    limits: dict[str, str] = Field(default_factory=lambda: {"memory": "512Mi"},
                                   description="Maximum resources, e.g. {memory: 512Mi}.")


class Autoscaling(Model):
    """Horizontal autoscaling on the load each worker reports."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("self.minReplicas <= self.maxReplicas", "minReplicas must not exceed maxReplicas")]})

    enabled: bool = Field(False, description="Scale between minReplicas and maxReplicas by load.")
    minReplicas: int = Field(1, ge=1, le=100, description="Fewest replicas.")
    maxReplicas: int = Field(4, ge=1, le=100, description="Most replicas.")


# -- VezaPlatform ------------------------------------------------------------------


class PostgresConnection(Model):
    uriSecretRef: SecretKeyRef = Field(
        description="Secret key holding the PostgreSQL URI (postgresql://user:password@host:5432/db).")


class RedisConnection(Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("has(self.url) != has(self.urlSecretRef)", "set exactly one of url and urlSecretRef")]})

    url: str | None = Field(None, pattern=r"^rediss?://", description="Redis URL without credentials.")
    urlSecretRef: SecretKeyRef | None = Field(None, description="Secret key holding a Redis URL with credentials.")


class NatsConnection(Model):
    url: str = Field(description="NATS server URL(s), comma-separated, e.g. nats://nats:4222.",
                     pattern=r"^(nats|tls)://")
    credentialsSecretRef: SecretKeyRef | None = Field(None, description="Secret key holding a NATS .creds file.")


class S3Connection(Model):
    bucket: str = Field(description="Bucket for tracks, HLS segments and recordings.", min_length=3,
                        max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")
    region: str = Field("us-east-1", description="Region of the bucket.")
    endpoint: str | None = Field(None, pattern=r"^https?://",
                                 description="Endpoint URL for S3-compatible stores; empty for AWS.")
    credentialsSecretRef: LocalObjectRef | None = Field(
        None, description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; empty to use the "
                          "pod's identity (IRSA).")


class Connections(Model):
    postgres: PostgresConnection = Field(description="PostgreSQL: history, users, tracks.")
    redis: RedisConnection = Field(description="Redis: presence, rate limits, caches.")
    nats: NatsConnection = Field(description="NATS with JetStream: fan-out between replicas.")
    s3: S3Connection = Field(description="S3: audio tracks, HLS segments, recordings.")


class OidcProvider(Model):
    issuerURL: str = Field(description="OpenID Connect issuer URL.", pattern=r"^https?://")
    clientID: str = Field(description="Client id registered at the provider.", min_length=1)
    clientSecretRef: SecretKeyRef = Field(description="Secret key holding the client secret.")


class Auth(Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("self.refreshTokenTTLSeconds > self.accessTokenTTLSeconds",
            "refreshTokenTTLSeconds must exceed accessTokenTTLSeconds")]})

    accessTokenTTLSeconds: int = Field(900, ge=60, le=86400, description="Lifetime of access tokens.")
    refreshTokenTTLSeconds: int = Field(2592000, ge=300, le=31536000, description="Lifetime of refresh tokens.")
    keysSecretName: str | None = Field(
        None, max_length=253, description="Secret holding the JWT signing keys; the operator creates "
                                          "<platform>-jwt-keys once when empty. Never regenerated.")
    oidc: OidcProvider | None = Field(None, description="External login through an OIDC provider.")


class IngressTLS(Model):
    secretName: str = Field(description="TLS Secret for the host.", min_length=1, max_length=253)


class IngressSpec(Model):
    enabled: bool = Field(True, description="Create the Ingresses; turn off for a platform served through "
                                            "spec.gateway only (host still names the platform).")
    className: str | None = Field(None, description="IngressClass name; empty for the cluster default.")
    host: str = Field(description="Public host name of the platform, for its Ingresses and HTTPRoutes.",
                      min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    tls: IngressTLS | None = Field(None, description="Serve HTTPS with this Secret (the public URL is then https).")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations for every Ingress.")


class GatewayRef(Model):
    """A Gateway (Gateway API, gateway.networking.k8s.io/v1) the platform's HTTPRoutes attach to."""

    name: str = Field(description="Name of the Gateway.", min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    namespace: str | None = Field(
        None, min_length=1, max_length=63, pattern=DNS_LABEL,
        description="Namespace of the Gateway; empty for the platform's namespace. A Gateway in another "
                    "namespace must admit routes from this one (listeners[].allowedRoutes.namespaces).")
    sectionName: str | None = Field(
        None, min_length=1, max_length=253, pattern=DNS_SUBDOMAIN,
        description="Name of the listener to attach to; empty for every listener that admits the routes.")
    https: bool = Field(False, description="The Gateway terminates TLS for the host: the public URL is https "
                                           "(what ingress.tls says for the Ingresses).")


class Image(Model):
    repository: str = Field("ghcr.io/veza-platform/veza", description="Worker image repository.")
    tag: str = Field("0.1.0", min_length=1, max_length=128, description="Worker image tag.")
    pullPolicy: Literal["Always", "IfNotPresent", "Never"] = Field("IfNotPresent", description="Pull policy.")

    @property
    def reference(self) -> str:
        """The full image reference, repository:tag."""
        return f"{self.repository}:{self.tag}"

    def at(self, reference: str) -> Image:
        """This image (same pull policy) at another reference repository:tag, e.g. status.workerImage."""
        repository, _, tag = reference.rpartition(":")
        if not repository or not tag or "/" in tag:
            return self
        return self.model_copy(update={"repository": repository, "tag": tag})


class ApiSpec(Model):
    replicas: int = Field(2, ge=0, le=100, description="Backend API replicas.")
    resources: Resources = Field(default_factory=Resources, description="API container resources.")


class WorkerDefaults(Model):
    resources: Resources = Field(default_factory=Resources, description="Container resources.")


class Defaults(Model):
    chat: WorkerDefaults = Field(default_factory=WorkerDefaults, description="Defaults for chat workers.")
    stream: WorkerDefaults = Field(default_factory=WorkerDefaults, description="Defaults for stream workers.")


class Metrics(Model):
    enabled: bool = Field(True, description="Expose /metrics and annotate pods for scraping.")
    serviceMonitor: bool = Field(True, description="Create ServiceMonitors when the Prometheus Operator "
                                                   "CRD exists.")


class Observability(Model):
    metrics: Metrics = Field(default_factory=Metrics, description="Prometheus metrics.")
    otlpEndpoint: str | None = Field(None, pattern=r"^https?://", description="OTLP endpoint for traces.")


class LabelSelectorRequirement(Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("(self.operator in ['In', 'NotIn']) == (size(self.values) > 0)",
            "In and NotIn need values; Exists and DoesNotExist take none")]})

    key: str = Field(description="Label key.", min_length=1, max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(description="How the key relates to values.")
    values: list[str] = Field(default_factory=list, max_length=64,
                              description="Label values (In, NotIn); empty for Exists and DoesNotExist.")


class NamespaceSelector(Model):
    """A label selector of namespaces (metav1.LabelSelector): every term must match; empty selects all."""

    matchLabels: dict[str, str] = Field(default_factory=dict, description="Labels the namespace must carry.")
    matchExpressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, max_length=16, description="Label requirements the namespace must meet.")


# Names no product: the platform engineer labels the namespace of their front door.
FRONT_DOOR_LABEL = "veza.io/front-door"


class NetworkPolicies(Model):
    enabled: bool = Field(True, description="Default-deny plus what the workers need.")
    frontDoorNamespaceSelector: NamespaceSelector = Field(
        default_factory=lambda: NamespaceSelector(matchLabels={FRONT_DOOR_LABEL: "true"}),
        description="Namespaces allowed to reach the workers' HTTP port: where the Ingress controller or the "
                    "Gateway's proxies run (label it veza.io/front-door=true, or select it otherwise). "
                    "An empty selector admits every namespace.")


class VezaPlatformSpec(Model):
    """One Veza installation: where its backing services are and how it is exposed."""

    connections: Connections = Field(description="Backing services (existing PostgreSQL, Redis, NATS, S3).")
    auth: Auth = Field(default_factory=Auth, description="Tokens and login.")
    ingress: IngressSpec = Field(description="How end clients reach the platform: its host, and Ingresses "
                                             "unless disabled.")
    gateway: GatewayRef | None = Field(
        None, description="Also route the platform through this Gateway (Gateway API): an HTTPRoute per "
                          "platform, room and channel on ingress.host, when the cluster serves the API.")
    image: Image = Field(default_factory=Image, description="The worker image, used by every workload.")
    api: ApiSpec = Field(default_factory=ApiSpec, description="The backend API Deployment.")
    defaults: Defaults = Field(default_factory=Defaults, description="Defaults for rooms and channels.")
    observability: Observability = Field(default_factory=Observability, description="Metrics and traces.")
    networkPolicies: NetworkPolicies = Field(default_factory=NetworkPolicies, description="NetworkPolicies.")


# -- ChatRoom ------------------------------------------------------------------------


class ChatAutoscaling(Autoscaling):
    targetConnectionsPerReplica: int = Field(2000, ge=10, le=100000,
                                             description="Connections per replica to aim for.")

    @property
    def target_per_replica(self) -> int:
        return self.targetConnectionsPerReplica


class ChatLimits(Model):
    maxMembers: int = Field(10000, ge=1, le=1000000, description="Most members connected at once.")
    maxMessageBytes: int = Field(4096, ge=16, le=65536, description="Largest message text, in bytes.")
    messagesPerMinute: int = Field(60, ge=1, le=6000, description="Messages one user may send per minute.")


class Retention(Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("has(self.days) || has(self.maxMessages)", "set days, maxMessages or both")]})

    days: int | None = Field(None, ge=1, le=36500, description="Delete messages older than this.")
    maxMessages: int | None = Field(None, ge=100, description="Keep at most this many messages.")


class RoomMember(Model):
    user: str = Field(description="User id.", min_length=1, max_length=128)
    role: Literal["owner", "moderator", "member"] = Field("member", description="Role in the room.")


class Moderation(Model):
    slowModeSeconds: int = Field(0, ge=0, le=3600, description="Least time between two messages of a user.")
    blockedWords: list[str] = Field(default_factory=list, max_length=500,
                                    description="Messages containing these words are refused.")
    maxMentions: int | None = Field(None, ge=0, le=100, description="Most @mentions in one message.")


class ChatRoomSpec(Model):
    """One chat room and the workers that serve it."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("self.visibility == 'public' || (has(self.members) && self.members.exists(m, m.role == 'owner'))",
            "a private room needs at least one member with role owner"),
        cel("!has(self.autoscaling) || !self.autoscaling.enabled || "
            "(self.replicas >= self.autoscaling.minReplicas && self.replicas <= self.autoscaling.maxReplicas)",
            "replicas must lie within the autoscaling bounds"),
    ]})

    platformRef: LocalObjectRef = Field(description="The VezaPlatform this room belongs to.")
    title: str | None = Field(None, max_length=200, description="Display name; defaults to the room name.")
    replicas: int = Field(1, ge=0, le=100, description="Chat worker replicas (the scale subresource).")
    autoscaling: ChatAutoscaling | None = Field(None, description="Scale on connections per replica.")
    limits: ChatLimits = Field(default_factory=ChatLimits, description="Per-room limits.")
    retention: Retention | None = Field(None, description="How long history is kept; forever when empty.")
    visibility: Literal["public", "private"] = Field("public", description="Private rooms admit members only.")
    members: list[RoomMember] | None = Field(None, max_length=10000, description="Members and their roles.")
    moderation: Moderation = Field(default_factory=Moderation, description="Moderation settings.")
    deletionPolicy: Literal["Retain", "Delete"] = Field(
        "Retain", description="What happens to the history when the room is deleted.")
    channelRef: LocalObjectRef | None = Field(None, description="A StreamChannel to listen along with.")
    resources: Resources | None = Field(None, description="Overrides the platform's chat defaults.")


# -- StreamChannel -------------------------------------------------------------------


class Playlist(Model):
    tracks: list[str] = Field(min_length=1, max_length=10000, description="Track ids or S3 keys, in order.")
    shuffle: bool = Field(False, description="Play in random order.")


class Relay(Model):
    url: str = Field(pattern=r"^https?://", description="Upstream stream URL.")
    allowedHosts: list[str] = Field(default_factory=list, description="Hosts the relay may reach; the URL's "
                                                                      "host must be listed.")


class Fallback(Model):
    playlist: Playlist = Field(description="Played while the live source or relay is down.")


class Source(Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("self.type != 'playlist' || has(self.playlist)", "type playlist needs playlist"),
        cel("self.type != 'relay' || has(self.relay)", "type relay needs relay"),
    ]})

    type: Literal["live", "playlist", "relay"] = Field(description="Where the audio comes from.")
    playlist: Playlist | None = Field(None, description="Tracks to play (type playlist).")
    relay: Relay | None = Field(None, description="Upstream to pull (type relay).")
    fallback: Fallback | None = Field(None, description="What plays when the live source drops.")
    passwordSecretRef: SecretKeyRef | None = Field(None, description="Source password for live ingest.")


class Rendition(Model):
    name: str = Field(min_length=1, max_length=32, pattern=r"^[a-z0-9][a-z0-9-]*$",
                      description="Name in URLs, e.g. mp3-128.")
    codec: Literal["opus", "mp3", "aac"] = Field(description="Codec.")
    bitrateKbps: int = Field(128, ge=16, le=512, description="Bitrate in kbit/s.")


class Hls(Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("!has(self.partDurationSeconds) || self.partDurationSeconds * 2.0 <= double(self.targetDurationSeconds)",
            "partDurationSeconds must be at most half of targetDurationSeconds")]})

    enabled: bool = Field(True, description="Serve HLS.")
    targetDurationSeconds: int = Field(2, ge=1, le=10, description="Segment target duration.")
    partDurationSeconds: float | None = Field(
        None, ge=0.1, le=5.0,
        description="Low-Latency HLS: cut segments into parts of this duration (e.g. 0.5), with blocking "
                    "playlist reloads and preload hints. Unset serves plain HLS.")
    archive: bool = Field(True, description="Store every HLS segment (and each rendition's init segment) in S3 "
                                            "under channels/{channel}/hls/{rendition}/.")


class Delivery(Model):
    progressive: bool = Field(True, description="Serve progressive HTTP (Icecast-compatible).")
    hls: Hls = Field(default_factory=Hls, description="HLS delivery.")


class StreamAutoscaling(Autoscaling):
    targetListenersPerReplica: int = Field(5000, ge=10, le=100000, description="Listeners per replica.")

    @property
    def target_per_replica(self) -> int:
        return self.targetListenersPerReplica


class ListenerLimits(Model):
    maxListeners: int | None = Field(None, ge=1, description="Most listeners at once; unlimited when empty.")


class Recording(Model):
    enabled: bool = Field(False, description="Archive the stream to S3.")


def _default_renditions() -> list[Rendition]:
    return [Rendition(name="mp3-128", codec="mp3", bitrateKbps=128)]


class StreamChannelSpec(Model):
    """One audio channel and the workers that serve it."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("self.renditions.all(r, self.renditions.exists_one(o, o.name == r.name))",
            "rendition names must be unique"),
        cel("self.delivery.progressive || self.delivery.hls.enabled", "enable progressive or HLS delivery"),
    ]})

    platformRef: LocalObjectRef = Field(description="The VezaPlatform this channel belongs to.")
    title: str | None = Field(None, max_length=200, description="Display name; defaults to the channel name.")
    source: Source = Field(description="Where the audio comes from.")
    renditions: list[Rendition] = Field(default_factory=_default_renditions, min_length=1, max_length=8,
                                        description="Encodings served to listeners.")
    delivery: Delivery = Field(default_factory=Delivery, description="How listeners receive audio.")
    replicas: int = Field(1, ge=0, le=100, description="Stream worker replicas (the scale subresource).")
    autoscaling: StreamAutoscaling | None = Field(None, description="Scale on listeners per replica.")
    limits: ListenerLimits = Field(default_factory=ListenerLimits, description="Listener limits.")
    recording: Recording = Field(default_factory=Recording, description="Recording to S3.")
    visibility: Literal["public", "private"] = Field("public", description="Private channels need a token.")
    resources: Resources | None = Field(None, description="Overrides the platform's stream defaults.")
