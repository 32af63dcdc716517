"""Names, labels and owner references of everything the operator creates."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .models import API_VERSION

FIELD_MANAGER = "veza-operator"
MANAGED_BY = {"app.kubernetes.io/managed-by": FIELD_MANAGER}
OWNER_KIND = "veza.io/owner-kind"
OWNER_NAME = "veza.io/owner-name"
PLATFORM_LABEL = "veza.io/platform"
COMPONENT_LABEL = "app.kubernetes.io/component"
# The platform engineer's consent: this Secret (or this existing object named like a child) is the platform's.
USABLE_BY = "veza.io/usable-by"


@dataclass(frozen=True)
class Owner:
    """The custom resource a set of children belongs to."""

    kind: str
    name: str
    namespace: str
    uid: str

    @classmethod
    def of(cls, body: dict[str, Any]) -> Owner:
        meta = body["metadata"]
        return cls(body["kind"], meta["name"], meta["namespace"], meta["uid"])

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    def reference(self) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": self.kind, "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}

    def labels(self) -> dict[str, str]:
        return {**MANAGED_BY, OWNER_KIND: self.kind, OWNER_NAME: self.name}


def worker_name(component: str, name: str) -> str:
    """Children of a room are "chat-<room>", of a channel "stream-<channel>", of a platform "<platform>-api"."""
    return f"{component}-{name}"


def selector_labels(platform: str, component: str, name: str) -> dict[str, str]:
    """The labels a worker Deployment selects its pods by (immutable once created)."""
    return {"app.kubernetes.io/name": "veza", "app.kubernetes.io/instance": f"{component}-{name}",
            COMPONENT_LABEL: component, PLATFORM_LABEL: platform}


POOL_SHARD_LABEL = "veza.io/pool-shard"


def pool_name(platform: str, shard: int = 0, shards: int = 1) -> str:
    """A chat pool shard's Deployment and Service: "<platform>-chat-pool" for a single shard (the name the pool
    always had), "<platform>-chat-pool-<shard>" for several (a room's are "chat-<room>")."""
    return f"{platform}-chat-pool" if shards == 1 else f"{platform}-chat-pool-{shard}"


def pool_selector(platform: str, shard: int = 0, shards: int = 1) -> dict[str, str]:
    """A chat pool shard's pods: chat pods of the platform, its instance the shard's name."""
    return {**selector_labels(platform, "chat", "pool"), "app.kubernetes.io/instance": pool_name(platform, shard,
                                                                                                  shards)}


def selector_string(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def metadata(name: str, owner: Owner, labels: dict[str, str] | None = None,
             annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": owner.namespace,
                            "labels": {**(labels or {}), **owner.labels()},
                            "ownerReferences": [owner.reference()]}
    if annotations:
        meta["annotations"] = annotations
    return meta


def foreign(desired: Mapping[str, Any], observed: Mapping[str, Any]) -> bool:
    """Whether an existing object named like a child we want belongs to someone else.

    Ours: controlled by the child's owner (its uid). Handed over: labelled usable by the child's
    platform and controlled by nobody else (e.g. a ServiceAccount made beforehand with an IRSA role).
    """
    meta = observed.get("metadata") or {}
    owner_uids = {ref["uid"] for ref in desired["metadata"].get("ownerReferences") or [] if ref.get("controller")}
    controllers = {ref.get("uid") for ref in meta.get("ownerReferences") or [] if ref.get("controller")}
    if controllers & owner_uids:
        return False
    platform = desired["metadata"].get("labels", {}).get(PLATFORM_LABEL)
    return bool(controllers) or platform is None or (meta.get("labels") or {}).get(USABLE_BY) != platform
