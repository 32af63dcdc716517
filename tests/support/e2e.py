"""The end-to-end suite's handle on the platform and its end clients: everything goes through the
front door (Traefik's NodePort) with the platform's Host; and `running_platform`, which brings it up (for the
fixtures in tests/e2e/conftest.py and bench/promotion_bench.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.support.chat import ChatClient
from tests.support.kube import KubeCluster
from veza_local.cluster import Cluster
from veza_local.node import NODE_IP, POD_SUBNET
from veza_local.services import LocalService, NatsService, PostgresService, RedisService, S3Service

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "e2e"
EXAMPLES = REPO / "examples"
NAMESPACE = "veza-e2e"
OPERATOR_NAMESPACE = "veza-system"
# From examples/platform.yaml: the platform's host and the connection Secret's values.
HOST = "veza.example.com"
DB_USER, DB_PASSWORD = "veza", "change-me"


@dataclass
class Platform:
    """What the tests get: the cluster, the images, and the front door."""

    kube: KubeCluster
    cluster: Cluster
    image: str
    next_image: str  # the same build under a second tag, for the upgrade test
    namespace: str = NAMESPACE
    host: str = HOST
    # The managed services' host ports by Service name (postgres, redis, nats, minio): what the
    # platform's `networkPolicies.egress.backends` declares.
    backend_ports: dict[str, int] = field(default_factory=dict)
    # The managed PostgreSQL as its superuser (from this host): what a platform engineer's own access would be.
    database_url: str = ""

    @property
    def front_door(self) -> str:
        return self.cluster.front_door

    def url(self, path: str) -> str:
        return self.front_door + path

    @property
    def headers(self) -> dict[str, str]:
        return {"Host": self.host}

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return self.kube.kubectl("-n", self.namespace, *args, input=input, check=check)

    def pods(self, selector: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(self.kubectl("get", "pods", "-l", selector, "-o", "json"))["items"]
        return items

    def ready_pods(self, selector: str) -> list[str]:
        return [p["metadata"]["name"] for p in self.pods(selector)
                if p["metadata"].get("deletionTimestamp") is None
                and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]

    def restarts(self) -> dict[str, int]:
        """Container restarts of every pod in the platform's and the operator's namespaces."""
        counts: dict[str, int] = {}
        for ns in (self.namespace, OPERATOR_NAMESPACE):
            for pod in json.loads(self.kube.kubectl("-n", ns, "get", "pods", "-o", "json"))["items"]:
                counts[f"{ns}/{pod['metadata']['name']}"] = sum(
                    s.get("restartCount", 0) for s in pod["status"].get("containerStatuses", []))
        return counts

    def _front_door_api(self, path: str) -> Any:
        """An answer of Traefik's API (its pod's admin port): what the front door serves right now."""
        pod = json.loads(self.kube.kubectl("-n", "veza-front-door", "get", "pods", "-l",
                                           "app.kubernetes.io/name=traefik", "-o", "json"))["items"][0]
        with urllib.request.urlopen(f"http://{pod['status']['podIP']}:8080/api{path}", timeout=5) as response:
            return json.loads(response.read())

    def front_door_routers(self) -> set[str]:
        """The providers of the routers Traefik serves for the platform's host right now
        (`kubernetes`: Ingresses, `kubernetesgateway`: HTTPRoutes)."""
        return {r["provider"] for r in self._front_door_api("/http/routers") if self.host in r.get("rule", "")}

    def front_door_servers(self, service: str) -> int:
        """How many pods the front door balances the Kubernetes Service `service` over right now: it learns of
        a pod some time after the pod is Ready (the Deployment counts it available before)."""
        prefix = f"{self.namespace}-{service}-"
        return max((len(s.get("loadBalancer", {}).get("servers", [])) for s in self._front_door_api("/http/services")
                    if s["name"].startswith(prefix)), default=0)

    def wait_ready(self, *resources: str, timeout: int = 300) -> None:
        self.kubectl("wait", "--for=condition=Ready", f"--timeout={timeout}s", *resources)


PASSWORD = "e2e-password-1"

# A cloud's instance metadata endpoint, stood in for on this host (`metadata_address`).
METADATA_ADDRESS = "169.254.169.254"
METADATA_LABEL = "lo:veza-imds"
STAND_IN_BODY = b"veza e2e stand-in: reached\n"


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], capture_output=True, check=check)


@contextlib.contextmanager
def metadata_address() -> Iterator[str]:
    """169.254.169.254 on this host's loopback (labelled `lo:veza-imds`), like the metadata endpoint a
    cloud node reaches: a pod's packets to it go to the node like any other, so only a policy stops them."""
    address = f"{METADATA_ADDRESS}/32"
    _ip("addr", "del", address, "dev", "lo", check=False)  # left by a killed run
    _ip("addr", "add", address, "dev", "lo", "label", METADATA_LABEL)
    try:
        yield METADATA_ADDRESS
    finally:
        _ip("addr", "del", address, "dev", "lo", check=False)


class _StandIn(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(STAND_IN_BODY)))
        self.end_headers()
        self.wfile.write(STAND_IN_BODY)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def stand_in_servers(addresses: list[tuple[str, int]]) -> Iterator[None]:
    """An HTTP server answering 200 on each (address, port) of this host, for as long as the block runs."""
    servers = [http.server.ThreadingHTTPServer(address, _StandIn) for address in addresses]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


# Run in a pod (`python -c PROBE target...`): per "host:port", "open" plus the first line of whatever the
# server says first to an HTTP GET, or the error connecting (ConnectionRefusedError: rejected; TimeoutError).
PROBE = """
import json, socket, sys
out = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        conn = socket.create_connection((host, int(port)), timeout=5)
    except OSError as error:
        out[target] = type(error).__name__
        continue
    out[target] = "open"
    try:
        conn.sendall(b"GET / HTTP/1.0\\r\\nHost: probe\\r\\n\\r\\n")
        out[target] += " " + conn.recv(200).decode(errors="replace").splitlines()[0]
    except (OSError, IndexError):
        pass
    conn.close()
print(json.dumps(out))
"""


class Account:
    """A registered, logged-in user of the platform's API."""

    def __init__(self, platform: Platform, name: str) -> None:
        self.platform = platform
        self.name = name
        self.email = f"{name.lower()}-{uuid.uuid4().hex[:8]}@example.com"
        self.access_token = ""
        self.user_id = ""

    async def register(self, session: aiohttp.ClientSession) -> Account:
        await self._post(session, "/api/v1/auth/register", 202,
                         {"email": self.email, "password": PASSWORD, "display_name": self.name})
        body = await self._post(session, "/api/v1/auth/login", 200, {"email": self.email, "password": PASSWORD})
        self.access_token, self.user_id = body["access_token"], body["user_id"]
        return self

    async def _post(self, session: aiohttp.ClientSession, path: str, status: int, payload: dict[str, Any]
                    ) -> dict[str, Any]:
        """As a well-behaved client: every test comes from one address, and the API limits logins and
        registrations per address (docs/api.md), so a 429 is waited out as its Retry-After says."""
        p = self.platform
        for _ in range(30):
            async with session.post(p.url(path), headers=p.headers, json=payload) as r:
                if r.status == 429:
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                    continue
                assert r.status == status, await r.text()
                body: dict[str, Any] = await r.json()
                return body
        raise AssertionError(f"{path}: still rate limited")

    async def service_token(self, session: aiohttp.ClientSession, audience: str) -> str:
        p = self.platform
        async with session.post(p.url("/api/v1/auth/service-token"), json={"audience": audience},
                                headers={**p.headers, "Authorization": f"Bearer {self.access_token}"}) as r:
            assert r.status == 200, await r.text()
            token: str = (await r.json())["token"]
            return token


async def connect_chat(platform: Platform, token: str, room: str = "general", after: int | None = None,
                       attempts: int = 1) -> ChatClient:
    """A WebSocket to the room through the front door (retried `attempts` times while a pod goes)."""
    for attempt in range(attempts):
        session = aiohttp.ClientSession()
        url = platform.url(f"/chat/{room}/ws") + (f"?after={after}" if after is not None else "")
        try:
            ws = await session.ws_connect(url, protocols=("veza.chat.v1", f"bearer.{token}"),
                                          headers=platform.headers, heartbeat=10)
            client = ChatClient(ws, session)
            client.welcome = await client.expect("welcome")
            return client
        except (aiohttp.ClientError, ConnectionError, TimeoutError):
            await session.close()
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


GENERAL = "app.kubernetes.io/instance=chat-general"  # the example room's own pods (the chat pool's are chat pods too)


async def chat_worker_connections(platform: Platform, selector: str = GENERAL) -> dict[str, float]:
    """Open WebSockets per chat pod (the example room's, unless `selector` says which), read from each pod's own
    /metrics (kubectl exec, not pod IPs)."""
    counts: dict[str, float] = {}
    for pod in platform.ready_pods(selector):
        metrics = await asyncio.to_thread(
            platform.kubectl, "exec", pod, "--", "python", "-c",
            "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:8080/metrics').read().decode())")
        counts[pod] = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                          if line.startswith("veza_chat_connections"))
    return counts


def message_texts(client: ChatClient) -> list[tuple[int, Any]]:
    return [(f["seq"], f.get("text")) for f in client.frames if f["type"] == "event" and f["kind"] == "message"]


def example_manifests(image: str, backend_ports: dict[str, int]) -> list[dict[str, Any]]:
    """examples/{platform,chatroom,streamchannel}.yaml as they are, with the worker image set to
    the one built here (what a kustomize `images:` entry does) and where the workers connect
    declared for their egress policy (`egress_policy`)."""
    docs: list[dict[str, Any]] = []
    for name in ("platform.yaml", "chatroom.yaml", "streamchannel.yaml"):
        docs += [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]
    repository, tag = image.rsplit(":", 1)
    for doc in docs:
        if doc["kind"] == "VezaPlatform":
            doc["spec"]["image"] = {"repository": repository, "tag": tag}
            doc["spec"]["networkPolicies"] = {"egress": egress_policy(backend_ports)}
    return docs


def egress_policy(ports: dict[str, int]) -> dict[str, Any]:
    """What a platform engineer declares instead of the defaults (anywhere, any port): PostgreSQL, Redis
    and NATS at their address on their ports, S3 on the internet on its port, DNS in kube-system.

    A policy sees the ports the Services forward to, not the Services' own: the host's ports, and
    1053 for DNS (this cluster's CoreDNS runs without privilege, so not on 53)."""
    return {
        "dns": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "ports": [53, 1053]},
        "backends": [
            {"cidrs": [f"{NODE_IP}/32"], "ports": sorted(ports[name] for name in ("postgres", "redis", "nats"))},
            {"cidrs": ["0.0.0.0/0"], "ports": [ports["minio"]]},
        ],
    }


def _collect_diagnostics(kube: KubeCluster) -> None:
    """Everything one needs to understand a failure, kept after the run (CI uploads nothing else)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(Exception):
        (ARTIFACTS / "resources.txt").write_text(kube.kubectl(
            "get", "all,ingress,httproute,vezaplatform,chatroom,streamchannel,events", "-A", "-o", "wide", check=False))
    with contextlib.suppress(Exception):
        pods = json.loads(kube.kubectl("get", "pods", "-A", "-o", "json", check=False) or '{"items": []}')["items"]
        for pod in pods:
            ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            logs = kube.kubectl("-n", ns, "logs", name, "--all-containers", "--tail=400", check=False)
            (ARTIFACTS / f"{ns}_{name}.log").write_text(logs)


@contextlib.contextmanager
def running_platform(base: Path, image: str, archive: Path) -> Iterator[Platform]:
    """The platform as the end-to-end suite (and the promotion benchmark) runs it: a one-node cluster with the
    image `archive` imported, the managed services on the node's address, `helm install` of the chart, and
    examples/ applied and Ready. Stopped, with every pod's log kept in test-artifacts/e2e, on the way out."""
    started = time.monotonic()
    cluster = Cluster(base / "cluster")
    services: list[LocalService] = []
    kube: KubeCluster | None = None
    try:
        cluster.start(images=[archive])
        next_image = f"{image}-next"
        cluster.node.containerd.ctr("images", "tag", _normalized(image), _normalized(next_image))
        kube = KubeCluster(cluster.kubeconfig, plane=cluster.plane)

        # Managed services outside the cluster, on the node's address.
        services_dir = base / "services"
        postgres = PostgresService(services_dir, host=NODE_IP, clients=str(POD_SUBNET))
        services += [postgres.start(), RedisService(services_dir, host=NODE_IP).start(),
                     NatsService(services_dir, host=NODE_IP).start(), S3Service(services_dir, host=NODE_IP).start()]
        postgres.execute(f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{DB_PASSWORD}'; "
                         f"ALTER DATABASE {postgres.database} OWNER TO {DB_USER}")
        kube.kubectl("create", "namespace", NAMESPACE)
        kube.kubectl("label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted",
                     "pod-security.kubernetes.io/warn=restricted")
        # The names examples/platform.yaml points at.
        backend_ports: dict[str, int] = {}
        for name, port, service in (("postgres", 5432, services[0]), ("redis", 6379, services[1]),
                                    ("nats", 4222, services[2]), ("minio", 9000, services[3])):
            cluster.expose_host_service(NAMESPACE, name, port, service.port)
            backend_ports[name] = service.port

        repository, tag = image.rsplit(":", 1)
        # The operator's egress policy admits the API server's ports: 443 and 6443, and this one's own.
        api_ports = [443, 6443, cluster.plane.apiserver.port]
        kube.helm("install", "veza", str(REPO / "charts" / "veza"), "-n", OPERATOR_NAMESPACE, "--create-namespace",
                  "--set", f"image.repository={repository}", "--set-string", f"image.tag={tag}",
                  "--set-json", f"networkPolicy.apiServer.ports={json.dumps(api_ports)}",
                  # This cluster's CoreDNS runs without privilege on 1053 behind the Service's 53.
                  "--set-json", "networkPolicy.dns.ports=[53,1053]")
        kube.kubectl("-n", OPERATOR_NAMESPACE, "wait", "--for=condition=Available", "deployment", "--all",
                     "--timeout=300s")
        kube.kubectl("-n", NAMESPACE, "apply", "-f", "-",
                     input=yaml.safe_dump_all(example_manifests(image, backend_ports)))
        result = Platform(kube=kube, cluster=cluster, image=image, next_image=next_image, backend_ports=backend_ports,
                          database_url=postgres.url)
        result.wait_ready("vezaplatform/demo", "chatroom/general", "streamchannel/radio", timeout=420)
        _wait_front_door(result)
        print(f"e2e platform ready in {time.monotonic() - started:.0f} s at {cluster.front_door}")
        yield result
    finally:
        if kube is not None:
            _collect_diagnostics(kube)
        cluster.stop()
        for service in reversed(services):
            service.stop()


def _wait_front_door(platform: Platform, timeout: float = 60) -> None:
    """Until the front door routes to every workload: Traefik applies new endpoints a moment after
    the pods are Ready (it batches provider updates), as any controller may."""
    paths = {"/.well-known/jwks.json": 200, "/chat/general/history": 401, "/stream/radio/now-playing": 200}
    deadline = time.monotonic() + timeout
    pending = dict(paths)
    while pending:
        for path, status in list(pending.items()):
            request = urllib.request.Request(platform.url(path), headers=platform.headers)  # noqa: S310
            try:
                with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - the front door
                    answered = response.status
            except urllib.error.HTTPError as error:
                answered = error.code
            except OSError:
                answered = 0
            if answered == status:
                del pending[path]
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"the front door does not route {sorted(pending)} within {timeout:.0f} s")
        time.sleep(0.5)


def _normalized(image: str) -> str:
    """How containerd names an image the kubelet asks for as `image`."""
    name = image if "/" in image.split(":", 1)[0] else f"library/{image}"
    return name if "." in name.split("/", 1)[0] else f"docker.io/{name}"
