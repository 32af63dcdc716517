"""The end-to-end suite: Veza as a platform engineer runs it, on a real node, through the front door.

One session-scoped platform: the image built from the Dockerfile (`veza_local.images`), a
one-node cluster with containerd, kubelet, kube-proxy, kube-router (NetworkPolicies enforced),
CoreDNS and Traefik (`veza_local.cluster`), PostgreSQL, Redis, NATS and S3 as managed services outside the
cluster (host processes behind Services without selectors), `helm install` of the chart
with that image (the operator runs as a pod), then `kubectl apply` of `examples/` into a
namespace that enforces Pod Security `restricted`. Clients reach it only through the
front door (Traefik's NodePort, `Host: veza.example.com`), never through pod IPs.

Skipped, with the reason, where a real node or a container engine cannot run (not root,
no Docker). docs/e2e.md has the whole story.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.support.e2e import ARTIFACTS, DB_PASSWORD, DB_USER, NAMESPACE, OPERATOR_NAMESPACE, Platform
from tests.support.images import engine_or_skip
from tests.support.kube import KubeCluster

from veza_local.cluster import Cluster
from veza_local.images import build_veza_image, save_image
from veza_local.node import NODE_IP, POD_SUBNET, leftovers, unsupported_reason
from veza_local.services import LocalService, NatsService, PostgresService, RedisService, S3Service

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
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


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def veza_image_archive() -> Iterator[tuple[str, Path]]:
    """The image from the Dockerfile (cached by content), saved for import into the node."""
    if reason := unsupported_reason():
        pytest.skip(f"no real node here: {reason}")
    # The node needs only the archive: the engine stops after it, giving its CPU and memory back.
    with engine_or_skip() as engine:
        image = build_veza_image(engine)
        archive = save_image(engine, image)
    yield image, archive


@pytest.fixture(scope="session")
def node_tools() -> None:
    """The real node's tools and KEDA, which hack/test.sh builds in the background while the tests before this
    suite run (`VEZA_TOOLS_PENDING`: its log and exit status files); nothing to wait for otherwise."""
    pending = os.environ.get("VEZA_TOOLS_PENDING")
    if not pending:
        return
    exit_file, log = Path(pending + ".exit"), Path(pending + ".log")
    started = time.monotonic()
    while not exit_file.exists():
        if time.monotonic() - started > 3600:
            raise TimeoutError(f"the node's tools are still building after an hour: {log}")
        time.sleep(2)
    if exit_file.read_text().strip() != "0":
        raise RuntimeError(f"hack/build-tools.sh failed for the node's tools:\n{log.read_text()[-4000:]}")
    if (waited := time.monotonic() - started) > 1:
        print(f"waited {waited:.0f} s for the node's tools to build")


@pytest.fixture(scope="session")
def platform(e2e_dir: Path, veza_image_archive: tuple[str, Path], node_tools: None) -> Iterator[Platform]:
    image, archive = veza_image_archive
    started = time.monotonic()
    cluster = Cluster(e2e_dir / "cluster")
    services: list[LocalService] = []
    kube: KubeCluster | None = None
    try:
        cluster.start(images=[archive])
        next_image = f"{image}-next"
        cluster.node.containerd.ctr("images", "tag", _normalized(image), _normalized(next_image))
        kube = KubeCluster(cluster.kubeconfig, plane=cluster.plane)

        # Managed services outside the cluster, on the node's address.
        base = e2e_dir / "services"
        postgres = PostgresService(base, host=NODE_IP, clients=str(POD_SUBNET))
        services += [postgres.start(), RedisService(base, host=NODE_IP).start(),
                     NatsService(base, host=NODE_IP).start(), S3Service(base, host=NODE_IP).start()]
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
    # A stopped node leaves nothing behind (processes, mounts, the bridge): the next run starts clean.
    assert not leftovers(), leftovers()


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
