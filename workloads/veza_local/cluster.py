"""A one-node Kubernetes cluster on this machine, as a platform engineer gets one.

`ControlPlane` (at the node's address, so pods reach the API server) + a real `Node`
+ the add-ons every cluster has: cluster DNS (CoreDNS) and a front door (Traefik,
serving Ingress and the Gateway API, reached on a host port). Managed services that
live outside the cluster (PostgreSQL, Redis, NATS, S3 on this host) are made
reachable from pods the way one points at an RDS or ElastiCache endpoint: Services
without a selector plus EndpointSlices (`expose_host_service`).

The system images (sandbox, CoreDNS, Traefik) hold one static binary each, so they
are written here as `docker save` archives with no container engine; the Veza image
itself is built from the Dockerfile (`veza_local.images`).
"""

from __future__ import annotations

import hashlib
import io
import json
import string
import tarfile
import time
from pathlib import Path
from typing import Any, Self

import yaml

from .controlplane import ControlPlane, tool, tools_bin_dir
from .node import CLUSTER_DNS, NODE_IP, PAUSE_IMAGE, Node, NodeError

ADDONS = Path(__file__).with_name("addons")
FRONT_DOOR_NAMESPACE = "veza-front-door"
GATEWAY_NAME = "veza"
NONROOT = 65532


def _cache_dir() -> Path:
    path = tools_bin_dir().parent / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


def scratch_image(reference: str, program: str, *, user: int = NONROOT) -> Path:
    """A one-layer image running the built tool `program` (a static Go binary) as /<program>.

    Written as a `docker save` archive, cached by content.

    Enough for static Go programs; what `ctr images import` and the kubelet need and nothing else.
    """
    data = Path(tool(program)).read_bytes()
    entrypoint = [f"/{program}"]
    key = hashlib.sha256(data + reference.encode() + json.dumps(entrypoint).encode() + str(user).encode())
    archive = _cache_dir() / f"{reference.replace('/', '_').replace(':', '_')}-{key.hexdigest()[:16]}.tar"
    if archive.exists():
        return archive
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("tmp", "etc"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        passwd = f"root:x:0:0:root:/:/sbin/nologin\nnonroot:x:{user}:{user}:nonroot:/:/sbin/nologin\n".encode()
        info = tarfile.TarInfo("etc/passwd")
        info.size, info.mode = len(passwd), 0o644
        tar.addfile(info, io.BytesIO(passwd))
        info = tarfile.TarInfo(program)
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = {
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": entrypoint, "User": f"{user}:{user}", "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    config_bytes = json.dumps(config).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [reference], "Layers": ["layer.tar"]}]
    tmp = archive.with_suffix(".tmp")
    with tarfile.open(tmp, mode="w") as out:
        for name, content in (("layer.tar", layer_bytes), (config_name, config_bytes),
                              ("manifest.json", json.dumps(manifest).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            out.addfile(info, io.BytesIO(content))
    tmp.rename(archive)
    return archive


def system_images() -> dict[str, Path]:
    """The sandbox, CoreDNS and Traefik images, by reference."""
    versions = {name: Path(tool(name)).resolve().name.split("-", 1)[1] for name in ("coredns", "traefik")}
    coredns = f"veza.local/coredns:{versions['coredns']}"
    traefik = f"veza.local/traefik:{versions['traefik']}"
    return {
        PAUSE_IMAGE: scratch_image(PAUSE_IMAGE, "pause"),
        coredns: scratch_image(coredns, "coredns"),
        traefik: scratch_image(traefik, "traefik"),
    }


class Cluster:
    """Control plane + one real node + CoreDNS + Traefik; `front_door` is the URL clients use."""

    def __init__(self, base_dir: Path) -> None:
        self.dir = Path(base_dir)
        self.node = Node(self.dir)
        self._plane: ControlPlane | None = None  # made in start(): its address exists only then
        self.front_door_port = 0

    @property
    def plane(self) -> ControlPlane:
        assert self._plane is not None, "the cluster is not started"
        return self._plane

    @property
    def kubeconfig(self) -> Path:
        return self.plane.kubeconfig

    @property
    def front_door(self) -> str:
        return f"http://{NODE_IP}:{self.front_door_port}"

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return self.plane.kubectl(*args, input=input, check=check)

    def apply(self, manifests: list[dict[str, Any]] | str) -> None:
        text = manifests if isinstance(manifests, str) else yaml.safe_dump_all(manifests)
        self.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=veza-e2e", "-f", "-",
                     input=text)

    def start(self, images: list[Path] | None = None) -> Self:
        """Bring up everything; `images` (archives) are imported into the node before it runs pods."""
        Node.prepare_host()
        self._plane = ControlPlane(self.dir / "plane", address=NODE_IP, fake_node=False)
        self.node.configure(self.plane)
        try:
            self.plane.start()
            system = system_images()
            self.node.start([*system.values(), *(images or [])])
            self._install_addons(system)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.node.stop()
        if self._plane is not None:
            self._plane.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def import_image(self, archive: Path) -> None:
        self.node.containerd.import_image(archive)

    # -- add-ons --------------------------------------------------------------------------------
    def _install_addons(self, system: dict[str, Path]) -> None:
        images = {ref.split("/")[1].split(":")[0]: ref for ref in system}
        self.kubectl("apply", "--server-side", "-f", tool("gateway-api-crds.yaml"))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/gateways.gateway.networking.k8s.io",
                     "crd/httproutes.gateway.networking.k8s.io", "crd/gatewayclasses.gateway.networking.k8s.io")
        for name in ("coredns", "traefik"):
            text = string.Template((ADDONS / f"{name}.yaml").read_text()).substitute(
                image=images[name], cluster_dns=CLUSTER_DNS, namespace=FRONT_DOOR_NAMESPACE,
                gateway=GATEWAY_NAME, node_ip=NODE_IP)
            self.apply(text)
        self.kubectl("-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=120s")
        self.kubectl("-n", FRONT_DOOR_NAMESPACE, "rollout", "status", "deployment/traefik", "--timeout=120s")
        self.front_door_port = int(self.kubectl("-n", FRONT_DOOR_NAMESPACE, "get", "service", "traefik", "-o",
                                                "jsonpath={.spec.ports[?(@.name=='web')].nodePort}"))
        self._wait_gateway()

    def _wait_gateway(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.kubectl("-n", FRONT_DOOR_NAMESPACE, "get", "gateway", GATEWAY_NAME, "-o",
                                  "jsonpath={.status.conditions[?(@.type=='Programmed')].status}", check=False)
            if status.strip() == "True":
                return
            time.sleep(0.5)
        raise NodeError(f"Gateway {FRONT_DOOR_NAMESPACE}/{GATEWAY_NAME} not Programmed within {timeout:.0f} s")

    # -- services outside the cluster -----------------------------------------------------------
    def expose_host_service(self, namespace: str, name: str, port: int, host_port: int) -> None:
        """`name.namespace.svc:port` in the cluster -> this host's `NODE_IP:host_port`."""
        self.apply([
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
             "spec": {"ports": [{"name": "main", "port": port, "targetPort": host_port, "protocol": "TCP"}]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": f"{name}-host", "namespace": namespace,
                          "labels": {"kubernetes.io/service-name": name,
                                     "endpointslice.kubernetes.io/managed-by": "veza-e2e"}},
             "addressType": "IPv4",
             "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": True}}],
             "ports": [{"name": "main", "port": host_port, "protocol": "TCP"}]},
        ])


__all__ = ["FRONT_DOOR_NAMESPACE", "GATEWAY_NAME", "Cluster", "scratch_image", "system_images"]
