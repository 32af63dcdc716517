"""The ChatRoom and StreamChannel specs: one set of models for the operator, the CRDs and the workers.

Each kind has two models. The worker spec is what a worker receives in VEZA_RESOURCE_SPEC (the
CR's `.spec` without the fields only the operator reads); the CR spec extends it with those
(`platformRef`, `replicas`, `autoscaling`, `resources`, `deletionPolicy`, a room's `placement`). The
operator generates the CRDs from the CR specs (`veza_operator.crds`) and parses CRs with them; workers parse their
spec with the worker specs. Attributes are snake_case; the JSON names (aliases) are the CRD's
camelCase ones. Unknown fields are ignored: the API server prunes them anyway.

Two sets of rules meet here. The pydantic constraints are what a worker accepts: anything else
would make it fail at start. `api(...)` adds what only the API server enforces, on top of that:
tighter bounds (a worker started by hand may run without a rate limit or keep history for
seconds; a CR may not), fields a CR must set, and fields a CR leaves absent where a worker reads
an empty value. What the API server admits is therefore always accepted by the worker
(tests/operator/test_specs.py checks it).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

# The key `api()` files its rules under in a field's JSON schema; the CRD generator consumes it.
API_RULES = "x-veza-api"


def api(*, required: bool = False, default: bool = True, **schema: Any) -> dict[str, Any]:
    """What the API server enforces on a field beyond what a worker accepts (the CRD only).

    `schema`: OpenAPI keywords that replace the field's bounds in the CRD (minimum, maximum, type,
    minItems, pattern...); `required`: a CR must set the field; `default=False`: a CR leaves it
    absent (no default in the CRD) while a worker reads the model's default.
    """
    return {API_RULES: {"required": required, "default": default and not required, "schema": schema}}


def cel(rule: str, message: str) -> dict[str, Any]:
    """An x-kubernetes-validations entry of a CRD schema."""
    return {"rule": rule, "message": message}


class Spec(BaseModel):
    """Base of the spec models: snake_case attributes, camelCase JSON names, unknown fields ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, alias_generator=to_camel)


# -- shared pieces ---------------------------------------------------------------


class SecretKeyRef(Spec):
    """A key of a Secret in the resource's namespace."""

    name: str = Field(description="Name of the Secret.", min_length=1, max_length=253)
    key: str = Field(description="Key inside the Secret.", min_length=1, max_length=253)


class LocalObjectRef(Spec):
    name: str = Field(description="Name of the referenced object, in the same namespace.",
                      min_length=1, max_length=63, pattern=DNS_LABEL)


class Resources(Spec):
    """Compute resources of one worker container (Kubernetes quantities)."""

    requests: dict[str, str] = Field(default_factory=lambda: {"cpu": "100m", "memory": "128Mi"},
                                     description="Minimum resources reserved, e.g. {cpu: 100m, memory: 128Mi}.")
    limits: dict[str, str] = Field(default_factory=lambda: {"memory": "512Mi"},
                                   description="Maximum resources, e.g. {memory: 512Mi}.")


class Autoscaling(Spec):
    """Horizontal autoscaling on the load each worker reports."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("self.minReplicas <= self.maxReplicas", "minReplicas must not exceed maxReplicas")]})

    enabled: bool = Field(False, description="Scale between minReplicas and maxReplicas by load.")
    min_replicas: int = Field(1, ge=1, le=100, description="Fewest replicas.")
    max_replicas: int = Field(4, ge=1, le=100, description="Most replicas.")


Visibility = Literal["public", "private"]

# -- ChatRoom ------------------------------------------------------------------------


class ChatLimits(Spec):
    max_members: int = Field(10000, ge=1, le=1000000, description="Most members connected at once.")
    max_message_bytes: int = Field(4096, ge=16, le=65536, description="Largest message text, in bytes.")
    # A worker takes any positive rate (benchmarks and tests run it without a limit that matters).
    messages_per_minute: float = Field(60, gt=0, description="Messages one user may send per minute.",
                                       json_schema_extra=api(type="integer", minimum=1, maximum=6000))


class Retention(Spec):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("has(self.days) || has(self.maxMessages)", "set days, maxMessages or both")]})

    # A worker takes fractions of a day and a handful of messages (what its tests wait for).
    days: float | None = Field(None, gt=0, description="Delete messages older than this.",
                               json_schema_extra=api(type="integer", minimum=1, maximum=36500))
    max_messages: int | None = Field(None, ge=1, description="Keep at most this many messages.",
                                     json_schema_extra=api(minimum=100))


class RoomMember(Spec):
    user: str = Field(description="User id.", min_length=1, max_length=128)
    role: Literal["owner", "moderator", "member"] = Field("member", description="Role in the room.")


class Moderation(Spec):
    slow_mode_seconds: int = Field(0, ge=0, le=3600, description="Least time between two messages of a user.")
    blocked_words: list[str] = Field(default_factory=list, max_length=500,
                                     description="Messages containing these words are refused.")
    max_mentions: int | None = Field(None, ge=0, le=100, description="Most @mentions in one message.")


class ChatRoomWorkerSpec(Spec):
    """What a chat worker knows of its room."""

    title: str | None = Field(None, max_length=200, description="Display name; defaults to the room name.")
    limits: ChatLimits = Field(default_factory=ChatLimits, description="Per-room limits.")
    retention: Retention = Field(default_factory=Retention, json_schema_extra=api(default=False),
                                 description="How long history is kept; forever when empty.")
    visibility: Visibility = Field("public", description="Private rooms admit members only.")
    members: list[RoomMember] = Field(default_factory=list, max_length=10000, json_schema_extra=api(default=False),
                                      description="Members and their roles.")
    moderation: Moderation = Field(default_factory=Moderation, description="Moderation settings.")
    channel_ref: LocalObjectRef | None = Field(None, description="A StreamChannel to listen along with.")

    def member_role(self, user: str) -> str | None:
        """The role the spec gives `user` in the room, if any."""
        return next((m.role for m in self.members if m.user == user), None)


class ChatAutoscaling(Autoscaling):
    target_connections_per_replica: int = Field(2000, ge=10, le=100000,
                                                description="Connections per replica to aim for.")

    @property
    def target_per_replica(self) -> int:
        return self.target_connections_per_replica


class ChatRoomSpec(ChatRoomWorkerSpec):
    """One chat room and the workers that serve it."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("self.visibility == 'public' || (has(self.members) && self.members.exists(m, m.role == 'owner'))",
            "a private room needs at least one member with role owner"),
        cel("!has(self.autoscaling) || !self.autoscaling.enabled || "
            "(self.replicas >= self.autoscaling.minReplicas && self.replicas <= self.autoscaling.maxReplicas)",
            "replicas must lie within the autoscaling bounds"),
    ]})

    platform_ref: LocalObjectRef = Field(description="The VezaPlatform this room belongs to.")
    replicas: int = Field(1, ge=0, le=100, description="Chat worker replicas (the scale subresource).")
    autoscaling: ChatAutoscaling | None = Field(None, description="Scale on connections per replica.")
    deletion_policy: Literal["Retain", "Delete"] = Field(
        "Retain", description="What happens to the history when the room is deleted.")
    resources: Resources | None = Field(None, description="Overrides the platform's chat defaults.")
    placement: Literal["Auto", "Dedicated", "Pooled"] = Field(
        "Auto", description="Where the room's workers run: Pooled on the platform's chat pool, Dedicated on a "
                            "Deployment of its own, Auto pooled until its load promotes it (the platform's "
                            "chat.autopilot).")


# -- StreamChannel -------------------------------------------------------------------


class Playlist(Spec):
    # A worker plays an empty playlist (silence until tracks are uploaded); a CR names at least one track.
    tracks: list[str] = Field(default_factory=list, max_length=10000, description="Track ids or S3 keys, in order.",
                              json_schema_extra=api(required=True, minItems=1))
    shuffle: bool = Field(False, description="Play in random order.")


class Relay(Spec):
    url: str = Field("", description="Upstream stream URL.",
                     json_schema_extra=api(required=True, pattern=r"^https?://"))
    allowed_hosts: list[str] = Field(default_factory=list, description="Hosts the relay may reach; the URL's "
                                                                       "host must be listed.")


class Fallback(Spec):
    playlist: Playlist = Field(default_factory=Playlist, json_schema_extra=api(required=True),
                               description="Played while the live source or relay is down.")


class Source(Spec):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("self.type != 'playlist' || has(self.playlist)", "type playlist needs playlist"),
        cel("self.type != 'relay' || has(self.relay)", "type relay needs relay"),
    ]})

    type: Literal["live", "playlist", "relay"] = Field("playlist", description="Where the audio comes from.",
                                                       json_schema_extra=api(required=True))
    playlist: Playlist = Field(default_factory=Playlist, json_schema_extra=api(default=False),
                               description="Tracks to play (type playlist).")
    relay: Relay = Field(default_factory=Relay, json_schema_extra=api(default=False),
                         description="Upstream to pull (type relay).")
    fallback: Fallback = Field(default_factory=Fallback, json_schema_extra=api(default=False),
                               description="What plays when the live source drops.")
    password_secret_ref: SecretKeyRef | None = Field(None, description="Source password for live ingest.")


# Path segments of a channel's URLs that a rendition name would shadow.
RESERVED_RENDITION_NAMES = ("hls", "source", "now-playing", "tracks")


class Rendition(Spec):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel(f"!(self.name in {list(RESERVED_RENDITION_NAMES)})",
            f"rendition names {', '.join(RESERVED_RENDITION_NAMES)} are reserved paths")]})

    name: str = Field(min_length=1, max_length=32, pattern=r"^[a-z0-9][a-z0-9-]*$",
                      description="Name in URLs, e.g. mp3-128.")
    codec: Literal["opus", "mp3", "aac"] = Field(description="Codec.")
    # Every encoder takes 8 kbit/s without failing, but MP3 at 48 kHz cannot go below 32 and AAC
    # floors near 24: 16 is the least that means something for Opus, the only codec that honours it.
    bitrate_kbps: int = Field(128, ge=16, le=512, description="Bitrate in kbit/s.")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_RENDITION_NAMES:
            raise ValueError(f"rendition name {value!r} is a reserved path")
        return value


class Hls(Spec):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("!has(self.partDurationSeconds) || self.partDurationSeconds * 2.0 <= double(self.targetDurationSeconds)",
            "partDurationSeconds must be at most half of targetDurationSeconds")]})

    enabled: bool = Field(True, description="Serve HLS.")
    # Whole seconds: EXT-X-TARGETDURATION is an integer, and players poll a playlist once per target.
    target_duration_seconds: int = Field(2, ge=1, le=10, description="Segment target duration.")
    part_duration_seconds: float | None = Field(
        None, ge=0.1, le=5.0,
        description="Low-Latency HLS: cut segments into parts of this duration (e.g. 0.5), with blocking "
                    "playlist reloads and preload hints. Unset serves plain HLS.")
    archive: bool = Field(True, description="Store every HLS segment (and each rendition's init segment) in S3 "
                                            "under channels/{channel}/hls/{rendition}/.")


class Delivery(Spec):
    progressive: bool = Field(True, description="Serve progressive HTTP (Icecast-compatible).")
    hls: Hls = Field(default_factory=Hls, description="HLS delivery.")


class ListenerLimits(Spec):
    max_listeners: int | None = Field(None, ge=1, description="Most listeners at once; unlimited when empty.")


class Recording(Spec):
    enabled: bool = Field(False, description="Archive the stream to S3.")


def _default_renditions() -> list[Rendition]:
    return [Rendition(name="mp3-128", codec="mp3", bitrate_kbps=128)]


class StreamChannelWorkerSpec(Spec):
    """What a stream worker knows of its channel."""

    title: str | None = Field(None, max_length=200, description="Display name; defaults to the channel name.")
    source: Source = Field(default_factory=Source, json_schema_extra=api(required=True),
                           description="Where the audio comes from.")
    renditions: list[Rendition] = Field(default_factory=_default_renditions, min_length=1, max_length=8,
                                        description="Encodings served to listeners.")
    delivery: Delivery = Field(default_factory=Delivery, description="How listeners receive audio.")
    limits: ListenerLimits = Field(default_factory=ListenerLimits, description="Listener limits.")
    recording: Recording = Field(default_factory=Recording, description="Recording to S3.")
    visibility: Visibility = Field("public", description="Private channels need a token.")

    def rendition(self, name: str) -> Rendition | None:
        return next((r for r in self.renditions if r.name == name), None)


class StreamAutoscaling(Autoscaling):
    target_listeners_per_replica: int = Field(5000, ge=10, le=100000, description="Listeners per replica.")

    @property
    def target_per_replica(self) -> int:
        return self.target_listeners_per_replica


class StreamChannelSpec(StreamChannelWorkerSpec):
    """One audio channel and the workers that serve it."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("self.renditions.all(r, self.renditions.exists_one(o, o.name == r.name))",
            "rendition names must be unique"),
        cel("self.delivery.progressive || self.delivery.hls.enabled", "enable progressive or HLS delivery"),
    ]})

    platform_ref: LocalObjectRef = Field(description="The VezaPlatform this channel belongs to.")
    replicas: int = Field(1, ge=0, le=100, description="Stream worker replicas (the scale subresource).")
    autoscaling: StreamAutoscaling | None = Field(None, description="Scale on listeners per replica.")
    resources: Resources | None = Field(None, description="Overrides the platform's stream defaults.")


def operator_only_fields(worker: type[Spec], cr: type[Spec]) -> frozenset[str]:
    """The JSON names of the fields of a CR spec that its workers do not receive."""
    def names(model: type[Spec]) -> set[str]:
        return {f.alias or n for n, f in model.model_fields.items()}
    return frozenset(names(cr) - names(worker))
