"""The operator's few API calls: server-side apply, create-once, status patch, get, delete, events.

An asyncio client (aiohttp) authenticated the way kopf itself logs in (in-cluster
ServiceAccount, else kubeconfig). The operator deliberately does not use the
`kubernetes` package: it is synchronous (every call would need a thread) and
importing its models costs ~60 MB of memory per process.
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import aiohttp
from opentelemetry import trace

from .naming import FIELD_MANAGER

tracer = trace.get_tracer("veza.operator")

if TYPE_CHECKING:  # kopf is imported where the operator runs, not by `veza crds` or `veza up`
    import kopf


PARTIAL_METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


@dataclass(frozen=True)
class ApiKind:
    """Where a kind lives in the API and what the operator does with it (`kinds.py` lists them all)."""

    kind: str
    group: str  # "" for the core API
    version: str
    plural: str
    verbs: frozenset[str]  # what the chart's RBAC must grant on it
    watched: bool = False  # kopf watches it (only objects labelled as managed by the operator)
    prunable: bool = False  # deleted when a spec no longer asks for it
    status_read: bool = False  # a reconcile reads its status: the store keeps it
    optional: bool = False  # served only when an API is installed (Prometheus Operator, Gateway API)

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def prefix(self) -> str:
        """The API path prefix: /api/v1 or /apis/<group>/<version>."""
        return f"/apis/{self.group_version}" if self.group else f"/api/{self.version}"


@dataclass
class ApiError(Exception):
    status: int
    body: str

    def __str__(self) -> str:
        return f"API error {self.status}: {self.body[:500]}"


def _login(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    import kopf

    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError("no in-cluster ServiceAccount and no kubeconfig found")
    return info


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    ctx = ssl.create_default_context(cafile=info.ca_path)
    if info.ca_data:
        ctx.load_verify_locations(cadata=base64.b64decode(info.ca_data).decode())
    cert, key = info.certificate_path, info.private_key_path
    if info.certificate_data and info.private_key_data:  # ssl wants files: write them privately
        with tempfile.NamedTemporaryFile("wb", delete=False, suffix=".crt") as c, \
                tempfile.NamedTemporaryFile("wb", delete=False, suffix=".key") as k:
            c.write(base64.b64decode(info.certificate_data))
            k.write(base64.b64decode(info.private_key_data))
        cert, key = c.name, k.name
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def _span_name(method: str, path: str) -> str:
    """`PATCH deployments/status`-like: the resource (and subresource), not the object's name, so spans
    group per kind of call."""
    parts = path.split("?")[0].strip("/").split("/")
    if "namespaces" in parts[:-1] and len(parts) > parts.index("namespaces") + 2:
        parts = parts[parts.index("namespaces") + 2:]
    else:
        parts = parts[3:] if parts[0] == "apis" else parts[2:]
    resource = parts[0] if parts else ""
    sub = f"/{parts[2]}" if len(parts) > 2 else ""
    return f"{method} {resource}{sub}"


class KubeClient:
    def __init__(self, settings: kopf.OperatorSettings, kinds: Mapping[str, ApiKind], *, pool_size: int = 32) -> None:
        self.settings = settings
        self.kinds = kinds
        self.pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None
        self._info: kopf.ConnectionInfo | None = None

    def _connect(self) -> aiohttp.ClientSession:
        self._info = _login(self.settings)
        headers = {"Accept": "application/json", "User-Agent": "veza-operator"}
        auth = None
        if self._info.token:
            headers["Authorization"] = f"Bearer {self._info.token}"
        elif self._info.username and self._info.password:
            auth = aiohttp.BasicAuth(self._info.username, self._info.password)
        connector = aiohttp.TCPConnector(limit=self.pool_size, ssl=_ssl_context(self._info))
        return aiohttp.ClientSession(base_url=self._info.server, headers=headers, auth=auth, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=30), json_serialize=json.dumps)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _path(self, kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
        api = self.kinds[kind]
        path = f"{api.prefix}/namespaces/{namespace}/{api.plural}"
        if name:
            path += f"/{name}"
        if sub:
            path += f"/{sub}"
        return path

    async def _call(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                    params: dict[str, str] | None = None, accept: str | None = None) -> dict[str, Any]:
        # A client span per call (a no-op without tracing), child of the reconcile that made it.
        with tracer.start_as_current_span(_span_name(method, path), kind=trace.SpanKind.CLIENT,
                                          attributes={"http.request.method": method, "url.path": path}) as span:
            for attempt in (1, 2):
                if self._session is None:
                    self._session = self._connect()
                data = None if body is None else json.dumps(body)
                headers = {"Content-Type": content_type, **({"Accept": accept} if accept else {})}
                async with self._session.request(method, path.lstrip("/"), data=data, params=params,
                                                 headers=headers) as resp:
                    text = await resp.text()
                    span.set_attribute("http.response.status_code", resp.status)
                    if resp.status == 401 and attempt == 1:
                        # The ServiceAccount token was rotated under us: log in again, once.
                        await self.close()
                        continue
                    if resp.status >= 400:
                        raise ApiError(resp.status, text)
                    return json.loads(text) if text else {}
        raise AssertionError("unreachable")  # pragma: no cover

    async def serves(self, group_version: str, resource: str) -> bool:
        """Whether the API server serves `resource` in `group_version` (e.g. a CRD is installed)."""
        try:
            found = await self._call("GET", f"/apis/{group_version}")
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return any(r.get("name") == resource for r in found.get("resources", []))

    async def apply(self, manifest: dict[str, Any], manager: str = FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply with the operator's field manager (conflicts forced: we own these fields)."""
        meta = manifest["metadata"]
        return await self._call("PATCH", self._path(manifest["kind"], meta["namespace"], meta["name"]), manifest,
                                "application/apply-patch+yaml", {"fieldManager": manager, "force": "true"})

    async def create(self, manifest: dict[str, Any]) -> bool:
        """Create the object unless it exists; True when this call created it."""
        try:
            await self._call("POST", self._path(manifest["kind"], manifest["metadata"]["namespace"]), manifest,
                             params={"fieldManager": FIELD_MANAGER})
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None,
                   page: int = 500) -> list[dict[str, Any]]:
        """Every object of `kind` (in `namespace`, or all namespaces), page by page, with kind and
        apiVersion set on each (a list's items carry neither)."""
        api = self.kinds[kind]
        path = f"{api.prefix}/namespaces/{namespace}/{api.plural}" if namespace else f"{api.prefix}/{api.plural}"
        params = {"limit": str(page), **({"labelSelector": label_selector} if label_selector else {})}
        items: list[dict[str, Any]] = []
        while True:
            found = await self._call("GET", path, params=params)
            for item in found.get("items") or []:
                items.append({"apiVersion": api.group_version, "kind": kind, **item})
            token = (found.get("metadata") or {}).get("continue")
            if not token:
                return items
            params["continue"] = token

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._call("GET", self._path(kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def get_metadata(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """An object's metadata only (PartialObjectMetadata): a Secret's labels without its data."""
        try:
            found = await self._call("GET", self._path(kind, namespace, name), accept=PARTIAL_METADATA)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        meta: dict[str, Any] = found.get("metadata") or {}
        return meta

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        try:
            await self._call("DELETE", self._path(kind, namespace, name), {"propagationPolicy": "Background"})
        except ApiError as exc:
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
        await self._call("POST", self._path("Event", meta["namespace"]), event)

    async def patch_metadata(self, kind: str, namespace: str, name: str, metadata: dict[str, Any]) -> None:
        """Merge-patch metadata (finalizers); include resourceVersion to fail on a concurrent change."""
        await self._call("PATCH", self._path(kind, namespace, name), {"metadata": metadata},
                         "application/merge-patch+json")

    async def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        try:
            await self._call("PATCH", self._path(kind, namespace, name, "status"), {"status": status},
                             "application/merge-patch+json")
        except ApiError as exc:
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


_SUFFIXES: dict[str, Decimal] = {
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40), "Pi": Decimal(2**50),
    "Ei": Decimal(2**60), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12), "P": Decimal(10**15),
    "E": Decimal(10**18)}


def parse_quantity(text: str) -> Decimal:
    """A Kubernetes resource quantity ("500m", "1Gi", "2k", "1e3") as a number."""
    text = text.strip()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if text.endswith(suffix):
            return Decimal(text[: -len(suffix)]) * _SUFFIXES[suffix]
    return Decimal(text)


def _same_quantity(a: str, b: str) -> bool:
    try:
        return parse_quantity(a) == parse_quantity(b)
    except (ValueError, InvalidOperation):
        return False

