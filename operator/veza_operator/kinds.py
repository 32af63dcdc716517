"""Every kind of object the operator reads or writes, in one registry.

The API client's paths, kopf's watches, what the store keeps of a child's status, what a
reconcile may prune, the optional APIs, the CRDs and the reconcile of each custom resource all
derive from these entries; tests/operator/test_kinds.py checks that the chart's RBAC grants
every verb listed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from veza_core import specs

from .chatroom import reconcile_chat_room
from .controller import ReconcileFn
from .kube import ApiKind
from .models import GROUP, VERSION, VezaPlatformSpec
from .platform import reconcile_platform
from .streamchannel import reconcile_stream_channel

# What a child's verbs are: kopf watches it (labelled as ours), we apply it (server-side apply
# creates it when absent) and delete it when a spec no longer asks for it.
WATCH = frozenset({"get", "list", "watch"})
APPLY = frozenset({"create", "patch"})
MANAGED = WATCH | APPLY | {"delete"}


def child(kind: str, group: str, version: str, plural: str, *, status_read: bool = False,
          optional: bool = False) -> ApiKind:
    """A kind the operator creates, watches and prunes."""
    return ApiKind(kind, group, version, plural, verbs=MANAGED, watched=True, prunable=True,
                   status_read=status_read, optional=optional)


CHILDREN: tuple[ApiKind, ...] = (
    # Status read: a worker Deployment's readiness, a Job's outcome, a Gateway's verdict on an HTTPRoute.
    child("Deployment", "apps", "v1", "deployments", status_read=True),
    child("Service", "", "v1", "services"),
    child("ServiceAccount", "", "v1", "serviceaccounts"),
    child("ConfigMap", "", "v1", "configmaps"),
    child("Ingress", "networking.k8s.io", "v1", "ingresses"),
    child("NetworkPolicy", "networking.k8s.io", "v1", "networkpolicies"),
    child("PodDisruptionBudget", "policy", "v1", "poddisruptionbudgets"),
    child("HorizontalPodAutoscaler", "autoscaling", "v2", "horizontalpodautoscalers"),
    child("Job", "batch", "v1", "jobs", status_read=True),
    child("ServiceMonitor", "monitoring.coreos.com", "v1", "servicemonitors", optional=True),  # Prometheus Operator
    child("HTTPRoute", "gateway.networking.k8s.io", "v1", "httproutes", status_read=True, optional=True),
    child("ScaledObject", "keda.sh", "v1alpha1", "scaledobjects", optional=True),  # autoscaling provider KEDA
)
# Read, never written: watched whole (not only what is labelled as ours), status kept; a change reconciles
# the platforms naming the object (handlers.py). A CloudNativePG Cluster a platform's PostgreSQL is (cnpg.py).
REFERENCED: tuple[ApiKind, ...] = (
    ApiKind("Cluster", "postgresql.cnpg.io", "v1", "clusters", verbs=WATCH, watched=True, status_read=True,
            optional=True),
)
# Written but never watched nor pruned: the JWT keys (created once, then read and patched only to roll
# them, keys.py; of the other Secrets a spec names only the metadata is read: do they exist, are they
# labelled for the platform) and Events.
OTHERS: tuple[ApiKind, ...] = (
    ApiKind("Secret", "", "v1", "secrets", verbs=frozenset({"get", "create", "patch"})),
    ApiKind("Event", "", "v1", "events", verbs=frozenset({"create"})),
)


@dataclass(frozen=True)
class OwnerKind:
    """A custom resource of ours: its API coordinates, its CRD's presentation and its reconcile."""

    api: ApiKind
    singular: str
    short_names: tuple[str, ...]
    spec_model: type[BaseModel]
    reconcile: ReconcileFn
    scalable: bool  # the scale subresource (replicas, for the HPA)
    columns: tuple[dict[str, Any], ...] = ()  # printer columns besides Ready, Reason, URL and Age
    subresource_verbs: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: {"status": frozenset({"get", "patch"})})

    @property
    def kind(self) -> str:
        return self.api.kind

    @property
    def plural(self) -> str:
        return self.api.plural

    @property
    def crd_name(self) -> str:
        return f"{self.api.plural}.{GROUP}"


def owner(kind: str, plural: str, *, extra_verbs: frozenset[str] = frozenset()) -> ApiKind:
    return ApiKind(kind, GROUP, VERSION, plural, verbs=WATCH | extra_verbs)


PLATFORM = OwnerKind(owner("VezaPlatform", "vezaplatforms"), "vezaplatform", ("vzp",), VezaPlatformSpec,
                     reconcile_platform, scalable=False, columns=(
    {"name": "Host", "type": "string", "jsonPath": ".spec.ingress.host"},
    {"name": "Gateway", "type": "string", "jsonPath": ".spec.gateway.name", "priority": 1},
    {"name": "Image", "type": "string", "jsonPath": ".spec.image.tag", "priority": 1},
    {"name": "Workers", "type": "string", "jsonPath": ".status.workerImage", "priority": 1},
))
# Rooms with deletionPolicy Delete carry a finalizer until their history is purged: patched.
CHAT_ROOM = OwnerKind(owner("ChatRoom", "chatrooms", extra_verbs=frozenset({"patch"})), "chatroom", ("vzroom",),
                      specs.ChatRoomSpec, reconcile_chat_room, scalable=True, columns=(
    {"name": "Platform", "type": "string", "jsonPath": ".spec.platformRef.name"},
    {"name": "Placement", "type": "string", "jsonPath": ".status.placement"},
    {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
    {"name": "Visibility", "type": "string", "jsonPath": ".spec.visibility", "priority": 1},
))
STREAM_CHANNEL = OwnerKind(owner("StreamChannel", "streamchannels"), "streamchannel", ("vzchan",),
                           specs.StreamChannelSpec, reconcile_stream_channel, scalable=True, columns=(
    {"name": "Platform", "type": "string", "jsonPath": ".spec.platformRef.name"},
    {"name": "Source", "type": "string", "jsonPath": ".spec.source.type"},
    {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
))
OWNERS: tuple[OwnerKind, ...] = (PLATFORM, CHAT_ROOM, STREAM_CHANNEL)

# -- what the rest of the operator reads --------------------------------------------------------

API: Mapping[str, ApiKind] = {k.kind: k for k in (*CHILDREN, *REFERENCED, *OTHERS, *(o.api for o in OWNERS))}
RECONCILERS: Mapping[str, ReconcileFn] = {o.kind: o.reconcile for o in OWNERS}
STATUS_READ = frozenset(k.kind for k in (*CHILDREN, *REFERENCED) if k.status_read)
PRUNABLE = frozenset(k.kind for k in CHILDREN if k.prunable)  # never Secrets: the keys
