"""The operator's few API calls: server-side apply, create-once, status patch, get.

The `kubernetes` client is synchronous; every call here runs in a worker thread
(`asyncio.to_thread`) so a slow request never stalls the event loop. Responses
are read as raw JSON: the client's model deserialisation costs more than the
request on small objects.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import InvalidOperation
from typing import Any

import kubernetes
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from kubernetes.utils.quantity import parse_quantity

from .models import GROUP, VERSION
from .naming import FIELD_MANAGER

# kind -> (API path prefix, plural). Only the kinds the operator writes or reads.
KINDS: dict[str, tuple[str, str]] = {
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Service": ("/api/v1", "services"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "Secret": ("/api/v1", "secrets"),
    "Event": ("/api/v1", "events"),
    "Ingress": ("/apis/networking.k8s.io/v1", "ingresses"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "HorizontalPodAutoscaler": ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
    "Job": ("/apis/batch/v1", "jobs"),
    "VezaPlatform": (f"/apis/{GROUP}/{VERSION}", "vezaplatforms"),
    "ChatRoom": (f"/apis/{GROUP}/{VERSION}", "chatrooms"),
    "StreamChannel": (f"/apis/{GROUP}/{VERSION}", "streamchannels"),
}


class KubeClient:
    def __init__(self, api: ApiClient) -> None:
        self.api = api

    @classmethod
    def from_environment(cls, pool_size: int = 32) -> KubeClient:
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        config = kubernetes.client.Configuration.get_default_copy()
        config.connection_pool_maxsize = pool_size
        return cls(ApiClient(config))

    def _path(self, kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
        prefix, plural = KINDS[kind]
        path = f"{prefix}/namespaces/{namespace}/{plural}"
        if name:
            path += f"/{name}"
        if sub:
            path += f"/{sub}"
        return path

    def _call(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
              query: list[tuple[str, str]] | None = None) -> dict[str, Any]:
        response = self.api.call_api(
            path, method, query_params=query or [], header_params={
                "Content-Type": content_type, "Accept": "application/json"},
            body=body, auth_settings=["BearerToken"], _preload_content=False, _request_timeout=30,
        )
        data = response[0].data if isinstance(response, tuple) else response.data
        return json.loads(data) if data else {}

    # -- calls, each in a thread ------------------------------------------------------
    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply with the operator's field manager (conflicts forced: we own these fields)."""
        meta = manifest["metadata"]
        path = self._path(manifest["kind"], meta["namespace"], meta["name"])
        return await asyncio.to_thread(
            self._call, "PATCH", path, manifest, "application/apply-patch+yaml",
            [("fieldManager", FIELD_MANAGER), ("force", "true")])

    async def create(self, manifest: dict[str, Any]) -> bool:
        """Create the object unless it exists; True when this call created it."""
        path = self._path(manifest["kind"], manifest["metadata"]["namespace"])
        try:
            await asyncio.to_thread(self._call, "POST", path, manifest, "application/json",
                                    [("fieldManager", FIELD_MANAGER)])
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await asyncio.to_thread(self._call, "GET", self._path(kind, namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        try:
            await asyncio.to_thread(self._call, "DELETE", self._path(kind, namespace, name), {
                "propagationPolicy": "Background"})
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def post_event(self, about: dict[str, Any], *, type: str, reason: str, message: str) -> None:
        meta = about["metadata"]
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": about["apiVersion"], "kind": about["kind"], "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "type": type, "reason": reason, "message": message[:1024],
            "source": {"component": FIELD_MANAGER}, "reportingComponent": FIELD_MANAGER,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }
        await asyncio.to_thread(self._call, "POST", self._path("Event", meta["namespace"]), event)

    async def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        try:
            await asyncio.to_thread(self._call, "PATCH", self._path(kind, namespace, name, "status"),
                                    {"status": status}, "application/merge-patch+json")
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile: nothing to report on
                raise


# -- comparing what we want with what is there ------------------------------------------

def is_subset(desired: Any, observed: Any) -> bool:
    """True when every field we set has the value we want in the observed object.

    Fields the API server or other controllers add are ignored; empty maps and
    lists we set match absent ones (the server drops them); quantities compare
    by value ("2000" and "2k", "0.5" and "500m").
    """
    if isinstance(desired, dict):
        if not desired:
            return observed in (None, {})
        if not isinstance(observed, dict):
            return False
        return all(is_subset(v, observed.get(k)) for k, v in desired.items())
    if isinstance(desired, list):
        if not desired:
            return observed in (None, [])
        if not isinstance(observed, list) or len(observed) != len(desired):
            return False
        return all(is_subset(d, o) for d, o in zip(desired, observed, strict=True))
    if desired == observed:
        return True
    if isinstance(desired, str | int) and isinstance(observed, str | int):
        return _same_quantity(str(desired), str(observed))
    return False


def _same_quantity(a: str, b: str) -> bool:
    try:
        return bool(parse_quantity(a) == parse_quantity(b))
    except (ValueError, InvalidOperation, TypeError):
        return False

