"""The API group, and the VezaPlatform spec: the custom resource only the operator reads.

The ChatRoom and StreamChannel specs, which their workers read too, live in the shared core
(`veza_core.specs`, with the pieces this module reuses). `crds.py` turns both into the CRDs'
OpenAPI schemas (descriptions, defaults, enums, bounds and the CEL rules given in
`json_schema_extra`); the operator parses specs with the same models; `veza up` validates CR
files with them. Field names here are camelCase, as Kubernetes APIs are.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from veza_core import keys as jwt_keys
from veza_core.specs import DNS_LABEL as DNS_LABEL
from veza_core.specs import LocalObjectRef as LocalObjectRef
from veza_core.specs import Resources as Resources
from veza_core.specs import SecretKeyRef as SecretKeyRef
from veza_core.specs import cel

GROUP = "veza.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def describe_error(exc: ValidationError) -> str:
    """The first problem of a spec, as a status message: "spec.limits.maxMembers: ..."."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    return f"spec.{where}: {err.get('msg', 'invalid')}"


class Model(BaseModel):
    # Unknown fields are dropped by the API server's structural pruning anyway;
    # ignoring them here keeps `veza up` and the operator lenient in the same way.
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# -- VezaPlatform ------------------------------------------------------------------


class PostgresComponents(Model):
    """A database URI per component, each for a role granted only what that component needs."""

    api: SecretKeyRef | None = Field(None, description="Secret key holding the API's PostgreSQL URI.")
    chat: SecretKeyRef | None = Field(None, description="Secret key holding the chat workers' PostgreSQL URI.")
    stream: SecretKeyRef | None = Field(None, description="Secret key holding the stream workers' PostgreSQL URI.")


# CloudNativePG names a Cluster's Services and Secrets after it: <cluster>-rw (the primary), <cluster>-ro (the
# replicas) and <cluster>-app (the application user's credentials and URI, on <cluster>-rw).
CNPG_APP_SECRET_SUFFIX = "-app"  # noqa: S105 (a name, not a password)
CNPG_READ_SERVICE_SUFFIX = "-ro"
CNPG_APP_URI_KEY = "uri"


class PostgresClusterRef(Model):
    """A CloudNativePG Cluster (postgresql.cnpg.io/v1) in the platform's namespace."""

    name: str = Field(description="Name of the Cluster. Its application Secret <name>-app (key uri, on "
                                  "<name>-rw) is the schema owner's URI; <name>-ro serves the reads of "
                                  "postgres.read. Label the Secret veza.io/usable-by=<platform> (the Cluster's "
                                  "spec.inheritedMetadata.labels does).",
                      min_length=1, max_length=50, pattern=DNS_LABEL)

    @property
    def app_secret(self) -> str:
        return f"{self.name}{CNPG_APP_SECRET_SUFFIX}"

    @property
    def read_host(self) -> str:
        return f"{self.name}{CNPG_READ_SERVICE_SUFFIX}"


class PostgresRead(Model):
    """Reads that tolerate a little staleness go to a replica (the workers fall back to the primary)."""

    uriSecretRef: SecretKeyRef | None = Field(
        None, description="Secret key holding the URI of a read replica (or a pool of them). Empty with a "
                          "cluster: the cluster's <cluster>-ro Service, with the primary's credentials.")
    maxLagSeconds: int = Field(
        5, ge=0, le=3600, description="A replica further behind the primary than this is not read from.")


class PostgresAnalytics(Model):
    """Where the analytics store lives (docs/analytics.md): by default the schema `analytics` of the platform's
    own database."""

    uriSecretRef: SecretKeyRef = Field(
        description="Secret key holding the URI of a separate analytics database: the API's analytics consumer "
                    "writes there and the migration Job migrates it (its role must be able to create the schema "
                    "`analytics`).")


class PostgresConnection(Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("has(self.uriSecretRef) != has(self.cluster)", "set exactly one of uriSecretRef and cluster"),
        cel("!has(self.read) || has(self.read.uriSecretRef) || has(self.cluster)",
            "read needs a uriSecretRef unless a cluster is named")]})

    uriSecretRef: SecretKeyRef | None = Field(
        None, description="Secret key holding the PostgreSQL URI (postgresql://user:password@host:5432/db) of the "
                          "schema owner: the migration Job's, and every component's without its own URI. "
                          "Exclusive with cluster.")
    cluster: PostgresClusterRef | None = Field(
        None, description="A CloudNativePG Cluster instead of a URI: its <cluster>-app Secret's uri is the "
                          "schema owner's URI, and the platform is not Ready while the Cluster is not healthy.")
    components: PostgresComponents = Field(
        default_factory=PostgresComponents,
        description="Optional per-component URIs (a role per component); a component without one uses the "
                    "schema owner's (uriSecretRef, or the cluster's).")
    read: PostgresRead | None = Field(
        None, description="Route reads that tolerate staleness to a replica: read.uriSecretRef, or with a "
                          "cluster its <cluster>-ro Service. Empty: every read goes to the primary.")
    analytics: PostgresAnalytics | None = Field(
        None, description="A separate database for the analytics store. Empty: the schema `analytics` of the "
                          "platform's own database.")

    @model_validator(mode="after")
    def _one_source(self) -> PostgresConnection:
        if (self.uriSecretRef is None) == (self.cluster is None):
            raise ValueError("set exactly one of uriSecretRef and cluster")
        if self.read is not None and self.read.uriSecretRef is None and self.cluster is None:
            raise ValueError("read needs a uriSecretRef unless a cluster is named")
        return self

    @property
    def owner_uri(self) -> SecretKeyRef:
        """The schema owner's URI: uriSecretRef, or the cluster's application Secret."""
        if self.cluster is not None:
            return SecretKeyRef(name=self.cluster.app_secret, key=CNPG_APP_URI_KEY)
        assert self.uriSecretRef is not None  # _one_source
        return self.uriSecretRef


class RedisConnection(Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("has(self.url) != has(self.urlSecretRef)", "set exactly one of url and urlSecretRef")]})

    url: str | None = Field(None, pattern=r"^rediss?://", description="Redis URL without credentials.")
    urlSecretRef: SecretKeyRef | None = Field(None, description="Secret key holding a Redis URL with credentials.")


class NatsUsers(Model):
    """A NATS user per component (Secrets with keys `user` and `password`), each with its own subject permissions."""

    api: LocalObjectRef | None = Field(None, description="Secret with the API's NATS user and password.")
    chat: LocalObjectRef | None = Field(None, description="Secret with the chat workers' NATS user and password.")
    stream: LocalObjectRef | None = Field(None, description="Secret with the stream workers' NATS user and password.")


class NatsTLS(Model):
    caSecretRef: SecretKeyRef | None = Field(None, description="Secret key holding the CA certificate (PEM) that "
                                                                "signed the NATS servers' certificates.")


class NatsConnection(Model):
    url: str = Field(description="NATS server URL(s), comma-separated, e.g. nats://nats:4222.",
                     pattern=r"^(nats|tls)://")
    credentialsSecretRef: SecretKeyRef | None = Field(
        None, description="Secret key holding a NATS .creds file, mounted read-only into every worker.")
    users: NatsUsers = Field(default_factory=NatsUsers, description="Optional NATS user per component.")
    tls: NatsTLS = Field(default_factory=NatsTLS, description="TLS towards the NATS servers.")


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


class KeyRotation(Model):
    """When the operator rolls the JWT signing key, and how long the keys it replaces keep verifying."""

    periodSeconds: int | None = Field(
        None, ge=60, le=31536000,
        description="Roll the signing key this long after the current one started signing; empty: only on "
                    "demand (`veza keys rotate`).")
    overlapSeconds: int | None = Field(
        None, ge=60, le=31536000,
        description="How long a replaced key keeps verifying after every API replica signs with its "
                    "successor; at least auth.accessTokenTTLSeconds. Empty: accessTokenTTLSeconds, and at least "
                    "600 (the API's service tokens and OIDC logins in progress).")
    propagationSeconds: int = Field(
        120, ge=0, le=3600,
        description="How long a new key is published (verifying, not signing) before it signs, and a "
                    "replaced key verifies beyond its overlap: the kubelet's delay in updating mounted "
                    "Secrets (its sync period, about a minute) plus the workers' re-read (5 s).")


class Auth(Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("self.refreshTokenTTLSeconds > self.accessTokenTTLSeconds",
            "refreshTokenTTLSeconds must exceed accessTokenTTLSeconds"),
        cel("!has(self.keyRotation) || !has(self.keyRotation.overlapSeconds) "
            "|| self.keyRotation.overlapSeconds >= self.accessTokenTTLSeconds",
            "keyRotation.overlapSeconds must be at least accessTokenTTLSeconds: a token signed just before a "
            "rotation must keep verifying until it expires")]})

    accessTokenTTLSeconds: int = Field(900, ge=60, le=86400, description="Lifetime of access tokens.")
    refreshTokenTTLSeconds: int = Field(2592000, ge=300, le=31536000, description="Lifetime of refresh tokens.")
    keysSecretName: str | None = Field(
        None, max_length=253, description="Secret holding the JWT signing keys; the operator creates "
                                          "<platform>-jwt-keys once when empty. Never regenerated; keys roll "
                                          "by keyRotation or `veza keys rotate`.")
    keyRotation: KeyRotation | None = Field(
        None, description="Roll the signing key on a schedule (the Secret the operator created, or the one "
                          "keysSecretName names); without it keys roll only on demand.")
    oidc: OidcProvider | None = Field(None, description="External login through an OIDC provider.")

    @model_validator(mode="after")
    def _overlap_covers_access_tokens(self) -> Auth:
        overlap = self.keyRotation.overlapSeconds if self.keyRotation else None
        if overlap is not None and overlap < self.accessTokenTTLSeconds:
            raise ValueError(f"keyRotation.overlapSeconds ({overlap}) must be at least accessTokenTTLSeconds "
                             f"({self.accessTokenTTLSeconds}): a token signed just before a rotation must keep "
                             "verifying until it expires")
        return self

    @property
    def key_overlap_seconds(self) -> int:
        """How long a replaced key verifies after its successor signs everywhere: what the spec says, else
        the longest any token the API signs lives."""
        overlap = self.keyRotation.overlapSeconds if self.keyRotation else None
        return overlap if overlap is not None else max(self.accessTokenTTLSeconds, jwt_keys.SHORT_TOKENS_SECONDS)


class IngressTLS(Model):
    secretName: str = Field(description="TLS Secret for the host.", min_length=1, max_length=253)


class IngressSpec(Model):
    enabled: bool = Field(True, description="Create the Ingresses; turn off for a platform served through "
                                            "spec.gateway only (host still names the platform).")
    className: str | None = Field(None, description="IngressClass name; empty for the cluster default.")
    host: str = Field(description="Public host name of the platform, for its Ingresses and HTTPRoutes.",
                      min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    tls: IngressTLS | None = Field(None, description="Serve HTTPS with this Secret (the public URL is then https).")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations for every Ingress (only "
                                                                          "those the operator's settings allow).")
    trustedProxies: int = Field(
        1, ge=0, le=10, description="Proxies in front of the workers (the Ingress controller or Gateway, plus any "
                                    "load balancer that adds X-Forwarded-For): how many entries from the end of "
                                    "X-Forwarded-For the workers trust for the client's address.")


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


class ChatPool(Model):
    """The platform's chat pool: Deployments (shards) of generic chat workers serving the pooled rooms."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("self.minReplicas <= self.maxReplicas", "minReplicas must not exceed maxReplicas")]})

    enabled: bool = Field(True, description="Run the pool. Off: every room is Dedicated, whatever its placement "
                                            "says (a Pooled room waits, reported).")
    minReplicas: int = Field(2, ge=1, le=100, description="Fewest workers of each pool shard.")
    maxReplicas: int = Field(10, ge=1, le=1000, description="Most workers of each pool shard.")
    targetRoomsPerWorker: int = Field(1000, ge=1, le=100000,
                                      description="Pooled rooms per worker the operator sizes the pool for.")
    targetConnectionsPerWorker: int = Field(5000, ge=10, le=1000000,
                                            description="Connections per worker (over every pooled room) the "
                                                        "operator sizes the pool for.")
    shards: int = Field(1, ge=1, le=100, description="Pool Deployments the pooled rooms are spread over: each "
                                                     "room is routed to one shard (crc32 of its name modulo "
                                                     "shards), so its sockets meet at most that shard's "
                                                     "workers. Each shard is sized on its own rooms within "
                                                     "[minReplicas, maxReplicas].")
    resources: Resources | None = Field(None, description="Pool worker resources; defaults.chat.resources when "
                                                          "empty.")

    @model_validator(mode="after")
    def _bounds(self) -> ChatPool:
        if self.minReplicas > self.maxReplicas:
            raise ValueError("minReplicas must not exceed maxReplicas")
        return self


class ChatAutopilot(Model):
    """When an Auto room moves between the pool and workers of its own (hysteresis and a cool-down)."""

    promoteConnections: int = Field(2000, ge=1, le=10000000,
                                    description="Promote a pooled Auto room holding at least this many connections.")
    promoteMessagesPerSecond: int = Field(50, ge=1, le=1000000,
                                          description="Promote a pooled Auto room receiving at least this many "
                                                      "messages per second.")
    demoteBelowFraction: float = Field(
        0.25, ge=0.01, le=0.99,
        description="Demote a dedicated Auto room once both its connections and its messages per second are below "
                    "this fraction of the promotion thresholds (below 1: the gap between the two is the hysteresis).")
    coolDownSeconds: int = Field(300, ge=0, le=86400,
                                 description="Least time a room stays where it was last moved to.")


class ChatSpec(Model):
    pool: ChatPool = Field(default_factory=ChatPool, description="The chat pool serving pooled rooms.")
    autopilot: ChatAutopilot = Field(default_factory=ChatAutopilot,
                                     description="Promotion and demotion of Auto rooms by load.")


class Keda(Model):
    """Where KEDA reads the workers' metrics: a Prometheus that scrapes them (the chart's PodMonitor, or any
    scrape config that labels each series with its pod's `namespace` and `pod`)."""

    prometheusAddress: str = Field(description="Prometheus' HTTP API as KEDA's operator reaches it, e.g. "
                                               "http://prometheus-operated.monitoring.svc:9090.",
                                   pattern=r"^https?://[^\s/]+(/\S*)?$", max_length=512)
    pollingIntervalSeconds: int = Field(15, ge=1, le=3600, description="How often KEDA queries each trigger.")


class Autoscaling(Model):
    """Who scales the workers: rooms' and channels' replicas (with their `autoscaling.enabled`) and the pool's."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("self.provider != 'KEDA' || has(self.keda)", "provider KEDA needs keda.prometheusAddress")]})

    provider: Literal["HPA", "KEDA"] = Field(
        "HPA", description="HPA: an HPA per room or channel on its scale subresource, reading a Pods metric "
                           "through a custom-metrics adapter (prometheus-adapter); the operator sizes the chat "
                           "pool. KEDA: a KEDA ScaledObject per room or channel and per chat pool shard, with "
                           "Prometheus triggers; KEDA's HPAs own those replicas.")
    keda: Keda | None = Field(None, description="KEDA's Prometheus (provider KEDA).")
    scaleDownStabilizationSeconds: int = Field(
        300, ge=0, le=3600, description="How long the load must stay low before replicas are removed (the HPA's "
                                        "scale-down stabilization window).")

    @model_validator(mode="after")
    def _keda(self) -> Autoscaling:
        if self.provider == "KEDA" and self.keda is None:
            raise ValueError("provider KEDA needs keda.prometheusAddress")
        return self


class Metrics(Model):
    enabled: bool = Field(True, description="Expose /metrics and annotate pods for scraping.")
    serviceMonitor: bool = Field(True, description="Create ServiceMonitors when the Prometheus Operator "
                                                   "CRD exists.")


class Observability(Model):
    metrics: Metrics = Field(default_factory=Metrics, description="Prometheus metrics.")
    otlpEndpoint: str | None = Field(
        None, pattern=r"^https?://",
        description="OTLP/HTTP endpoint (a collector or Jaeger, e.g. http://jaeger.monitoring:4318) the workers "
                    "export traces to; no traces when empty.")
    traceSamplingRatio: float = Field(
        0.01, ge=0, le=1, description="Share of new traces recorded (parent-based: a request that arrives "
                                      "sampled is recorded whatever the ratio).")


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
METRICS_LABEL = "veza.io/metrics"


# Cloud metadata endpoints (AWS, and the others' IPv4 one): no egress rule ever reaches them, whatever
# CIDR the spec names (pods would fetch the node's credentials).
METADATA_ADDRESSES = ("169.254.169.254/32", "fd00:ec2::254/128")
ANYWHERE = ["0.0.0.0/0", "::/0"]


class EgressPeers(Model):
    """Where workers may connect: addresses outside the cluster, and namespaces whose pods (behind Services) serve."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("size(self.cidrs) > 0 || has(self.namespaceSelector)", "name cidrs, a namespaceSelector or both")]})

    cidrs: list[Annotated[str, Field(pattern=r"^[0-9a-fA-F:.]+/[0-9]{1,3}$", max_length=43)]] = Field(
        default_factory=list, max_length=32,
        description="CIDRs (IPv4 or IPv6) outside the cluster, e.g. a managed database's subnet. The cloud "
                    "metadata addresses (169.254.169.254, fd00:ec2::254) are always excepted.")
    namespaceSelector: NamespaceSelector | None = Field(
        None, description="Namespaces whose pods may be reached (a backing service behind a Service in the "
                          "cluster); an empty selector selects every namespace.")
    ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(
        default_factory=list, max_length=16, description="TCP ports (DNS: UDP and TCP); empty: every port.")

    @field_validator("cidrs")
    @classmethod
    def _cidrs(cls, cidrs: list[str]) -> list[str]:
        for cidr in cidrs:
            network = ipaddress.ip_network(cidr, strict=False)  # ValueError: not a CIDR
            if any(network.version == m.version and network.subnet_of(m)  # type: ignore[arg-type]
                   for m in map(ipaddress.ip_network, METADATA_ADDRESSES)):
                raise ValueError(f"{cidr} is a cloud metadata address: workers never reach it")
        return cidrs


def _anywhere(*ports: int) -> EgressPeers:
    return EgressPeers(cidrs=list(ANYWHERE), namespaceSelector=NamespaceSelector(), ports=list(ports))


class Egress(Model):
    """Where the workers may connect; the defaults reach anything but the metadata addresses."""

    dns: EgressPeers = Field(
        default_factory=lambda: _anywhere(53),
        description="The cluster's DNS (port 53, UDP and TCP; ports default to 53). Default: any address and "
                    "namespace, which also reaches a node-local cache; narrow it to "
                    "namespaceSelector {matchLabels: {kubernetes.io/metadata.name: kube-system}}.")
    backends: list[EgressPeers] = Field(
        default_factory=lambda: [_anywhere()], max_length=16,
        description="PostgreSQL, Redis, NATS and S3 (and an OTLP collector, an SMTP server): where every "
                    "worker and Job may connect. Default: any address and namespace on every port (they may "
                    "be anywhere); declare their CIDRs or namespaces and ports to narrow it.")


class NetworkPolicies(Model):
    enabled: bool = Field(True, description="Default-deny (ingress and egress) plus what the workers need.")
    egress: Egress = Field(default_factory=Egress, description="Where the workers may connect.")
    frontDoorNamespaceSelector: NamespaceSelector = Field(
        default_factory=lambda: NamespaceSelector(matchLabels={FRONT_DOOR_LABEL: "true"}),
        description="Namespaces allowed to reach the workers' HTTP port: where the Ingress controller or the "
                    "Gateway's proxies run (label it veza.io/front-door=true, or select it otherwise). "
                    "An empty selector admits every namespace.")
    metricsNamespaceSelector: NamespaceSelector = Field(
        default_factory=lambda: NamespaceSelector(matchLabels={METRICS_LABEL: "true"}),
        description="Namespaces allowed to scrape the workers' /metrics (on their HTTP port) while "
                    "observability.metrics is enabled: where Prometheus runs (label it veza.io/metrics=true, or "
                    "select it otherwise). An empty selector admits every namespace.")


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
    chat: ChatSpec = Field(default_factory=ChatSpec, description="The chat pool and the autopilot that moves rooms "
                                                                  "between it and workers of their own.")
    autoscaling: Autoscaling = Field(default_factory=Autoscaling,
                                     description="Which autoscaler scales rooms, channels and the chat pool.")
    observability: Observability = Field(default_factory=Observability, description="Metrics and traces.")
    networkPolicies: NetworkPolicies = Field(default_factory=NetworkPolicies, description="NetworkPolicies.")
