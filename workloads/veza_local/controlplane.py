"""A real Kubernetes control plane on loopback, without Docker or a kubelet.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler run as child
processes; kwok plays the kubelet of one fake Node, so pods of Deployments get
scheduled and become Ready. The binaries are built from Go modules by
``hack/build-tools.sh`` and cached by version (``$VEZA_CACHE/bin``).

With ``fake_node=False`` and an ``address`` pods can reach, the same control
plane serves a real node instead (``veza_local.node``).

Used by the test suite and the benchmarks; clients reach it through the
kubeconfig it writes (an admin token in the group system:masters).
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, ClassVar, Self

import yaml

from .pki import write_client_pki
from .services import LOOPBACK, LocalService, ServiceError, free_port, port_open

FAKE_NODE = "kwok-node-0"


def tools_bin_dir() -> Path:
    """Where hack/build-tools.sh puts the binaries."""
    if explicit := os.environ.get("VEZA_TOOLS_BIN"):
        return Path(explicit)
    cache = os.environ.get("VEZA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "veza"
    )
    return Path(cache) / "bin"


def tool(name: str) -> str:
    path = tools_bin_dir() / name
    if not path.exists():
        raise ServiceError(f"{name} not found in {path.parent}: run hack/build-tools.sh")
    return str(path)


class _Component(LocalService):
    """A control-plane process; its readiness probe is an HTTP(S) health endpoint."""

    health_path: ClassVar[str] = "/healthz"
    scheme: ClassVar[str] = "https"
    start_timeout = 90.0

    def __init__(self, plane: ControlPlane, host: str = LOOPBACK) -> None:
        super().__init__(plane.dir, host=host)
        self.plane = plane

    def client_flags(self) -> list[str]:
        """How the controller-manager and the scheduler reach the API server and serve their health port."""
        k = self.plane.kubeconfig
        return [f"--kubeconfig={k}", f"--authentication-kubeconfig={k}", f"--authorization-kubeconfig={k}",
                f"--bind-address={self.host}", f"--secure-port={self.port}", "--leader-elect=false"]

    def is_ready(self) -> bool:
        if not port_open(self.host, self.port):
            return False
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        req = urllib.request.Request(f"{self.scheme}://{self.host}:{self.port}{self.health_path}")  # noqa: S310 - http(s) only
        if self.scheme == "https":
            req.add_header("Authorization", f"Bearer {self.plane.admin_token}")
        try:
            with urllib.request.urlopen(req, timeout=2, context=ctx) as resp:  # noqa: S310 - loopback
                return resp.status == 200
        except OSError:
            return False


class Etcd(_Component):
    name = "etcd"
    scheme = "http"
    health_path = "/health"

    def __init__(self, plane: ControlPlane) -> None:
        super().__init__(plane)
        self.peer_port = free_port()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        peer = f"http://{self.host}:{self.peer_port}"
        return [
            tool("etcd"), "--name", "veza", "--data-dir", str(self.dir / "data"),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"veza={peer}", "--unsafe-no-fsync", "--log-level", "warn",
        ]


class KubeApiserver(_Component):
    name = "kube-apiserver"
    health_path = "/readyz"

    def __init__(self, plane: ControlPlane, host: str = LOOPBACK) -> None:
        super().__init__(plane, host)
        self.extra_flags: list[str] = []

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def command(self) -> list[str]:
        p = self.plane
        return [
            tool("kube-apiserver"),
            f"--etcd-servers={p.etcd.url}",
            f"--bind-address={self.host}", f"--advertise-address={self.host}", f"--secure-port={self.port}",
            f"--cert-dir={self.dir / 'pki'}",
            f"--token-auth-file={p.tokens_file}",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p.sa_public_key}",
            f"--service-account-signing-key-file={p.sa_private_key}",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--allow-privileged=true",
            # Write requests are logged, so tests and benchmarks can count them.
            f"--audit-policy-file={p.audit_policy}", f"--audit-log-path={p.audit_log}",
            "--audit-log-maxsize=200",
            # The aggregation layer: the API server proxies extension APIs (external.metrics.k8s.io from KEDA's
            # metrics server) with the front proxy's client certificate, straight to the backing Service's
            # endpoints (no kube-proxy on this host).
            f"--requestheader-client-ca-file={p.front_proxy_ca}", "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={p.front_proxy_cert}", f"--proxy-client-key-file={p.front_proxy_key}",
            "--enable-aggregator-routing=true",
            *self.extra_flags,
        ]

    @property
    def serving_cert(self) -> Path:
        return self.dir / "pki" / "apiserver.crt"


class KubeControllerManager(_Component):
    name = "kube-controller-manager"

    def command(self) -> list[str]:
        p = self.plane
        return [
            tool("kube-controller-manager"), *self.client_flags(),
            f"--service-account-private-key-file={p.sa_private_key}",
            f"--root-ca-file={p.apiserver.serving_cert}", "--use-service-account-credentials=false",
            # Fast garbage collection of children of newly installed custom resources.
            "--concurrent-gc-syncs=20",
        ]


class KubeScheduler(_Component):
    name = "kube-scheduler"

    def command(self) -> list[str]:
        return [tool("kube-scheduler"), *self.client_flags()]


class Kwok(_Component):
    name = "kwok"
    scheme = "http"

    def command(self) -> list[str]:
        p = self.plane
        return [
            tool("kwok"), f"--kubeconfig={p.kubeconfig}", "--config", tool("kwok-stages.yaml"),
            "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--node-ip={self.host}", f"--server-address={self.host}:{self.port}", "--cidr=10.244.0.0/16",
            # The heartbeat stage renews a Lease; without one the node controller sees no heartbeat,
            # marks the node NotReady after 40 s and every pod on it NotReady with it.
            "--node-lease-duration-seconds=40",
        ]


AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
        {"level": "None"},
    ],
}


class ControlPlane:
    """etcd + kube-apiserver + controller-manager + scheduler (+ kwok with one fake Node).

    `address` is where the API server listens and what it advertises (the `kubernetes`
    Service's endpoint): loopback unless real pods must reach it.
    """

    def __init__(self, base_dir: Path, *, address: str = LOOPBACK, fake_node: bool = True) -> None:
        self.dir = Path(base_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fake_node = fake_node
        self.admin_token = secrets.token_hex(24)
        # Static tokens (user, groups) of other clients, e.g. a kubelet; see add_token.
        self._tokens: list[tuple[str, str, str]] = []
        self.tokens_file = self.dir / "tokens.csv"
        self.sa_private_key = self.dir / "sa.key"
        self.sa_public_key = self.dir / "sa.pub"
        self.audit_policy = self.dir / "audit-policy.yaml"
        self.audit_log = self.dir / "audit.log"
        self.kubeconfig = self.dir / "kubeconfig"
        self.front_proxy_ca, self.front_proxy_cert, self.front_proxy_key = (
            self.dir / "pki" / f"front-proxy-client{suffix}" for suffix in ("-ca.crt", ".crt", ".key"))
        self.etcd = Etcd(self)
        self.apiserver = KubeApiserver(self, address)
        self.controller_manager = KubeControllerManager(self)
        self.scheduler = KubeScheduler(self)
        self.kwok = Kwok(self)

    @property
    def components(self) -> list[_Component]:
        parts: list[_Component] = [self.etcd, self.apiserver, self.controller_manager, self.scheduler]
        return [*parts, self.kwok] if self.fake_node else parts

    def add_token(self, user: str, groups: str = "") -> str:
        """A bearer token for `user` (comma-separated `groups`); call before start()."""
        token = secrets.token_hex(24)
        self._tokens.append((token, user, groups))
        return token

    def start(self) -> Self:
        self._write_credentials()
        try:
            self.etcd.start()
            self.apiserver.start()
            self._write_kubeconfig()
            self.controller_manager.start()
            self.scheduler.start()
            if self.fake_node:
                self.kwok.start()
                self._create_fake_node()
                self.wait_for_node(FAKE_NODE)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for component in reversed(self.components):
            component.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- setup --------------------------------------------------------------
    def _write_credentials(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.sa_private_key.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()))
        self.sa_public_key.write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        lines = [f'{self.admin_token},veza-admin,veza-admin,"system:masters"']
        lines += [f'{token},{user},{user},"{groups}"' for token, user, groups in self._tokens]
        self.tokens_file.write_text("\n".join(lines) + "\n")
        self.tokens_file.chmod(0o600)
        self.audit_policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        write_client_pki(self.dir / "pki", "front-proxy-client", ca_name="veza-front-proxy-ca",
                         common_name="front-proxy-client")

    def _write_kubeconfig(self) -> None:
        self.kubeconfig.write_text(self.kubeconfig_for(self.admin_token, "veza-admin"))
        self.kubeconfig.chmod(0o600)

    def kubeconfig_for(self, token: str, user: str, namespace: str = "default") -> str:
        return yaml.safe_dump({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "veza-local", "cluster": {
                "server": self.apiserver.url, "certificate-authority": str(self.apiserver.serving_cert)}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {"cluster": "veza-local", "user": user,
                                                    "namespace": namespace}}],
            "current-context": user,
        })

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        result = subprocess.run(
            [tool("kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input, capture_output=True, text=True, check=False, timeout=120,
        )
        if check and result.returncode != 0:
            raise ServiceError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def _create_fake_node(self) -> None:
        node: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": FAKE_NODE,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"kubernetes.io/hostname": FAKE_NODE, "kubernetes.io/os": "linux",
                           "kubernetes.io/arch": "amd64", "type": "kwok"},
            },
            "status": {
                # Fake and roomy: benchmarks schedule thousands of pods that request resources.
                "allocatable": {"cpu": "1000", "memory": "4Ti", "pods": "10000"},
                "capacity": {"cpu": "1000", "memory": "4Ti", "pods": "10000"},
            },
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(node))

    def wait_for_node(self, node: str, timeout: float = 90.0) -> None:
        """Until `node` is Ready and the default ServiceAccount exists (pods need both)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            ready = self.kubectl("get", "node", node, "-o",
                                 "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)
            sa = self.kubectl("get", "serviceaccount", "default", "-o", "name", check=False)
            if ready.strip() == "True" and sa.strip():
                return
            last = f"node Ready={ready.strip() or '?'}, default ServiceAccount={'yes' if sa.strip() else 'no'}"
            time.sleep(0.3)
        raise ServiceError(f"control plane not ready within {timeout:.0f} s: {last}")

    def audit_events(self) -> list[dict[str, Any]]:
        """Write requests the API server has logged so far (audit log, Metadata level)."""
        if not self.audit_log.exists():
            return []
        text = self.audit_log.read_text()
        # The API server may be writing its last line as we read: only lines it ended are whole.
        complete = text[:text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line.strip()]


def wait_for(condition: Any, timeout: float, interval: float = 0.2, message: str = "condition") -> Any:
    """Poll `condition()` until it returns a truthy value; that value is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message} not met within {timeout} s")
        time.sleep(interval)


__all__ = ["FAKE_NODE", "LOOPBACK", "ControlPlane", "tool", "tools_bin_dir", "wait_for"]
