"""A real Kubernetes node on this machine: containerd, kubelet, kube-proxy, CNI and kube-router.

It joins a `ControlPlane` started with ``fake_node=False`` at the node's address,
so pods run for real: images imported into containerd, Pod Security enforced,
Services through kube-proxy's iptables rules, NetworkPolicies (ingress and egress)
enforced by kube-router's network policy controller, cluster DNS from CoreDNS and a
front door (Traefik, Ingress and Gateway API) added by ``veza_local.cluster``.

What this machine needs (found the hard way, see docs/e2e.md):

- containerd 2 with its own config, root, state and socket (never Docker's), cgroupfs,
  and ``restrict_oom_score_adj``: this sandbox refuses a negative ``oom_score_adj``,
  which fails every pod sandbox otherwise;
- the CNI chain bridge + host-local -> firewall -> portmap: Docker's FORWARD policy is
  DROP, and the firewall plugin lets pod traffic through;
- the kubelet on cgroup v1 (``failCgroupV1: false``) under its own cgroup root, so
  whatever a run leaves behind is found and killed by the next one;
- kube-router with only its firewall controller (no routing, no service proxy): the
  bridge plugin enforces no NetworkPolicy, kube-router does it with iptables and ipsets
  (Debian's ``ipset``); traffic from the node itself to pods (the kubelet's probes,
  clients of the front door's NodePort) stays admitted, as on any kube-router node;
- one node per machine: paths under ``/run/veza-node`` and ``/var/lib/veza-node`` are
  fixed, which is what makes cleaning up after a killed run possible.

Everything runs as root (the kubelet and containerd need it).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Self

import yaml

from .controlplane import ControlPlane, tool, tools_bin_dir
from .pki import write_client_pki
from .services import LOOPBACK, LocalService, ServiceError, free_port

NODE_NAME = "veza-node"
BRIDGE = "veza0"
POD_SUBNET = ipaddress.ip_network("10.244.0.0/24")
NODE_IP = "10.244.0.1"  # the bridge's address: where pods reach the host (API server, backing services)
SERVICE_CIDR = "10.96.0.0/16"
CLUSTER_DNS = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
CNI_BIN_DIRS = ["/usr/lib/cni", "/opt/cni/bin"]
RUNC = "/usr/sbin/runc"
RUN_DIR = Path("/run/veza-node")  # short: unix socket paths are limited to 108 bytes
STATE_DIR = Path("/var/lib/veza-node")
CGROUP_ROOT = "veza-node"
PAUSE_IMAGE = "veza.local/pause:1.0"


class NodeError(ServiceError):
    """The node cannot run on this machine, or failed to start."""


def unsupported_reason() -> str | None:
    """Why a real node cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "a real node needs root (kubelet, containerd, network setup)"
    if not Path(RUNC).exists():
        return f"{RUNC} not found: apt-get install runc"
    if not any(Path(d, "bridge").exists() for d in CNI_BIN_DIRS):
        return "CNI plugins not found: apt-get install containernetworking-plugins"
    for exe in ("ip", "iptables"):
        if shutil.which(exe) is None:
            return f"{exe} not found"
    if shutil.which("ipset") is None:
        return "ipset not found (kube-router enforces NetworkPolicies with it): apt-get install ipset"
    missing = [t for t in ("containerd", "containerd-shim-runc-v2", "ctr", "kubelet", "kube-proxy", "kube-router",
                           "pause")
               if not (tools_bin_dir() / t).exists()]
    if missing:
        return f"{', '.join(missing)} not built: run hack/build-tools.sh"
    return None


def _run(*args: str, check: bool = True, input: bytes | None = None, timeout: float = 120) -> str:
    result = subprocess.run(args, input=input, capture_output=True, check=False, timeout=timeout)
    if check and result.returncode != 0:
        raise NodeError(f"{' '.join(args)} failed ({result.returncode}): "
                        f"{result.stderr.decode(errors='replace').strip()}")
    return result.stdout.decode(errors="replace")


def _healthz(port: int) -> bool:
    """The kubelet's and kube-proxy's health endpoint on loopback answers 200."""
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/healthz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _tools_path() -> str:
    # containerd finds its shim on PATH: ours (v2) must come before Debian's.
    return f"{tools_bin_dir()}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"


# -- certificates ------------------------------------------------------------------------------
def _write_pki(directory: Path) -> tuple[Path, Path, Path]:
    """A CA the kubelet trusts for clients, and the API server's client certificate for kubelets.

    The client certificate is in ``system:masters``, so the kubelet's webhook authorizer lets the
    API server through for `kubectl logs` and `exec`.
    """
    return write_client_pki(directory, "kubelet-client", ca_name="veza-node-ca",
                            common_name="kube-apiserver-kubelet-client", organization="system:masters")


# -- the node's processes ----------------------------------------------------------------------
class Containerd(LocalService):
    name = "containerd"
    start_timeout = 60.0

    def __init__(self, base_dir: Path) -> None:
        super().__init__(base_dir, port=free_port(), host=LOOPBACK)
        self.socket = RUN_DIR / "containerd.sock"
        self.config = self.dir / "config.toml"
        self.cni_conf_dir = self.dir / "net.d"

    def prepare(self) -> None:
        cni_bin_dirs = [d for d in CNI_BIN_DIRS if Path(d).exists()]
        self.cni_conf_dir.mkdir(parents=True, exist_ok=True)
        (self.cni_conf_dir / "10-veza.conflist").write_text(json.dumps(cni_config(), indent=1))
        self.config.write_text(f"""version = 3
root = "{STATE_DIR / 'containerd'}"
state = "{RUN_DIR / 'containerd'}"

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{RUN_DIR / 'containerd.sock.ttrpc'}"

[metrics]
  address = "{LOOPBACK}:{self.port}"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_cdi = false
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = {json.dumps(cni_bin_dirs)}
    conf_dir = "{self.cni_conf_dir}"

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "{LOOPBACK}"
  stream_server_port = "0"
""")

    def command(self) -> list[str]:
        return [tool("containerd"), "--config", str(self.config), "--log-level", "warn"]

    def popen_kwargs(self) -> dict[str, object]:
        return {"env": {**os.environ, "PATH": _tools_path()}}

    def is_ready(self) -> bool:
        return self.socket.exists() and self.running and subprocess.run(
            self.ctr_command("version"), capture_output=True, check=False, timeout=10).returncode == 0

    def ctr_command(self, *args: str) -> list[str]:
        return [tool("ctr"), "--address", str(self.socket), "--namespace", "k8s.io", *args]

    def ctr(self, *args: str, input: bytes | None = None, timeout: float = 300) -> str:
        return _run(*self.ctr_command(*args), input=input, timeout=timeout)

    def import_image(self, tarball: Path) -> None:
        """Load a `docker save` / OCI archive; the kubelet then finds it without pulling."""
        self.ctr("images", "import", "--no-unpack=false", "--snapshotter", "overlayfs", str(tarball))

    def images(self) -> set[str]:
        return {line.split()[0] for line in self.ctr("images", "ls").splitlines()[1:] if line.strip()}

    def stop_containers(self) -> None:
        """Kill every container's task, so no shim or process outlives the node."""
        with contextlib.suppress(NodeError, subprocess.TimeoutExpired):
            for task in self.ctr("tasks", "ls", "-q", timeout=30).split():
                with contextlib.suppress(NodeError, subprocess.TimeoutExpired):
                    self.ctr("tasks", "kill", "--all", "--signal", "SIGKILL", task, timeout=30)
            time.sleep(0.5)
            for task in self.ctr("tasks", "ls", "-q", timeout=30).split():
                with contextlib.suppress(NodeError, subprocess.TimeoutExpired):
                    self.ctr("tasks", "delete", "--force", task, timeout=30)


def cni_config() -> dict[str, Any]:
    hosts = list(POD_SUBNET.hosts())
    return {
        "cniVersion": "1.0.0", "name": "veza", "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True, "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(STATE_DIR / "cni-ipam"),
                      "ranges": [[{"subnet": str(POD_SUBNET), "gateway": NODE_IP,
                                   "rangeStart": str(hosts[9]), "rangeEnd": str(hosts[-1])}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            # Docker sets the FORWARD policy to DROP; this plugin lets pod traffic through.
            {"type": "firewall"},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


class Kubelet(LocalService):
    name = "kubelet"
    start_timeout = 90.0

    def __init__(self, base_dir: Path, plane: ControlPlane, containerd: Containerd, ca_file: Path,
                 token: str) -> None:
        super().__init__(base_dir, port=free_port(NODE_IP), host=NODE_IP)
        self.plane = plane
        self.containerd = containerd
        self.ca_file = ca_file
        self.token = token
        self.healthz_port = free_port()

    def prepare(self) -> None:
        (self.dir / "kubeconfig").write_text(self.plane.kubeconfig_for(self.token, f"system:node:{NODE_NAME}"))
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": NODE_IP, "port": self.port, "readOnlyPort": 0,
            "healthzBindAddress": LOOPBACK, "healthzPort": self.healthz_port,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(self.ca_file)}},
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{self.containerd.socket}",
            "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{CGROUP_ROOT}",
            # This host is cgroup v1 and may have swap; both are refused by default.
            "failCgroupV1": False, "failSwapOn": False,
            "clusterDNS": [CLUSTER_DNS], "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": str(self._resolv_conf()),
            "podLogsDir": str(STATE_DIR / "pod-logs"),
            "serializeImagePulls": False,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "2%", "imagefs.available": "2%"},
            "imageGCHighThresholdPercent": 99, "imageGCLowThresholdPercent": 95,
            "maxPods": 110, "registerNode": True,
            "shutdownGracePeriod": "0s",
        }
        (self.dir / "config.yaml").write_text(yaml.safe_dump(config))

    def _resolv_conf(self) -> Path:
        # Pods with dnsPolicy Default get this; the cluster's names come from CoreDNS either way.
        path = self.dir / "resolv.conf"
        path.write_text(f"nameserver {CLUSTER_DNS}\nsearch {CLUSTER_DOMAIN}\n")
        return path

    def command(self) -> list[str]:
        return [tool("kubelet"), f"--config={self.dir / 'config.yaml'}",
                f"--kubeconfig={self.dir / 'kubeconfig'}", f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}", f"--root-dir={STATE_DIR / 'kubelet'}",
                f"--cert-dir={self.dir / 'pki'}", "--v=1"]

    def popen_kwargs(self) -> dict[str, object]:
        return {"env": {**os.environ, "PATH": _tools_path()}}

    def is_ready(self) -> bool:
        return _healthz(self.healthz_port)


class KubeProxy(LocalService):
    name = "kube-proxy"

    def __init__(self, base_dir: Path, plane: ControlPlane, token: str) -> None:
        super().__init__(base_dir, host=LOOPBACK)
        self.plane = plane
        self.token = token
        self.metrics_port = free_port()

    def prepare(self) -> None:
        (self.dir / "kubeconfig").write_text(self.plane.kubeconfig_for(self.token, "system:kube-proxy"))

    def command(self) -> list[str]:
        return [tool("kube-proxy"), f"--kubeconfig={self.dir / 'kubeconfig'}", f"--hostname-override={NODE_NAME}",
                "--proxy-mode=iptables", f"--cluster-cidr={POD_SUBNET.supernet(new_prefix=16)}",
                f"--healthz-bind-address={LOOPBACK}:{self.port}",
                f"--metrics-bind-address={LOOPBACK}:{self.metrics_port}",
                # NodePorts only on the node's address (the front door's host port), not on every interface.
                f"--nodeport-addresses={NODE_IP}/32",
                # The sandbox may refuse conntrack sysctls; the defaults are fine here.
                "--conntrack-max-per-core=0", "--v=1"]

    def is_ready(self) -> bool:
        return _healthz(self.port)


# kube-router reads what its network policy controller needs, and nothing else.
KUBE_ROUTER_USER = "system:kube-router"
KUBE_ROUTER_RBAC = [
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "veza-node:kube-router"},
     "rules": [
         {"apiGroups": [""], "resources": ["namespaces", "pods", "services", "endpoints", "nodes"],
          "verbs": ["get", "list", "watch"]},
         {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["get", "list", "watch"]},
         {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
         {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "update"]},
     ]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
     "metadata": {"name": "veza-node:kube-router"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "veza-node:kube-router"},
     "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": KUBE_ROUTER_USER}]},
]
# The ipsets of kube-router's network policy controller (its `--cleanup-config` leaves them, and its chains).
KUBE_ROUTER_IPSET_PREFIXES = ("KUBE-SRC-", "KUBE-DST-", "inet6:KUBE-SRC-", "inet6:KUBE-DST-")
NODE_PORT_RANGE = "30000-32767"  # the API server's default; kube-router admits pods to the node's ports in it


class KubeRouter(LocalService):
    """kube-router's network policy controller: NetworkPolicies as iptables rules and ipsets.

    Its health endpoint listens on every address (kube-router has no flag for it), on a free port.
    """

    name = "kube-router"
    start_timeout = 60.0

    def __init__(self, base_dir: Path, plane: ControlPlane, token: str) -> None:
        super().__init__(base_dir, host=LOOPBACK)
        self.plane = plane
        self.token = token

    def prepare(self) -> None:
        (self.dir / "kubeconfig").write_text(self.plane.kubeconfig_for(self.token, KUBE_ROUTER_USER))
        self.plane.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(KUBE_ROUTER_RBAC))

    def command(self) -> list[str]:
        return [tool("kube-router"), f"--kubeconfig={self.dir / 'kubeconfig'}", f"--hostname-override={NODE_NAME}",
                "--run-firewall=true", "--run-router=false", "--run-service-proxy=false",
                f"--service-cluster-ip-range={SERVICE_CIDR}", f"--service-node-port-range={NODE_PORT_RANGE}",
                f"--health-port={self.port}", "--metrics-port=0"]

    def is_ready(self) -> bool:
        # Healthy once its controller synced; its chain hooked into FORWARD means the rules are in place.
        return _healthz(self.port) and subprocess.run(
            ["iptables", "-t", "filter", "-S", "KUBE-ROUTER-FORWARD"], capture_output=True, check=False).returncode == 0


# -- the node as a whole -----------------------------------------------------------------------
class Node:
    """containerd + kubelet + kube-proxy + kube-router on the bridge `veza0`, registered as `veza-node`.

    Usage: ``node = Node(dir); plane = ControlPlane(dir, address=NODE_IP, fake_node=False);
    node.configure(plane); plane.start(); node.start(images)``; stop the node before the plane.
    """

    def __init__(self, base_dir: Path) -> None:
        self.dir = Path(base_dir) / "node"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.plane: ControlPlane | None = None
        self.containerd = Containerd(self.dir)
        self.kubelet: Kubelet | None = None
        self.kube_proxy: KubeProxy | None = None
        self.kube_router: KubeRouter | None = None

    @staticmethod
    def prepare_host() -> None:
        """Clean up after an earlier run, then the bridge pods and the API server share."""
        if reason := unsupported_reason():
            raise NodeError(reason)
        cleanup_host()
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{NODE_IP}/{POD_SUBNET.prefixlen}", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        for key, value in {"net/ipv4/ip_forward": "1", "net/bridge/bridge-nf-call-iptables": "1"}.items():
            with contextlib.suppress(OSError):
                Path("/proc/sys", key).write_text(value)
        for controller in _cgroup_v1_controllers():
            Path(controller, CGROUP_ROOT).mkdir(exist_ok=True)

    def configure(self, plane: ControlPlane) -> None:
        """What the control plane needs to serve this node; call before `plane.start()`."""
        self.plane = plane
        ca, client_cert, client_key = _write_pki(self.dir / "pki")
        plane.apiserver.extra_flags += [
            # `kubectl logs/exec` reach the kubelet by IP: the node name resolves nowhere.
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--kubelet-client-certificate={client_cert}", f"--kubelet-client-key={client_key}",
        ]
        self.kubelet = Kubelet(self.dir, plane, self.containerd, ca,
                               plane.add_token(f"system:node:{NODE_NAME}", "system:nodes"))
        self.kube_proxy = KubeProxy(self.dir, plane, plane.add_token("system:kube-proxy"))
        self.kube_router = KubeRouter(self.dir, plane, plane.add_token(KUBE_ROUTER_USER))

    def start(self, images: list[Path]) -> Self:
        """Start containerd, import `images` (the sandbox image first), then the kubelet and kube-proxy, and
        kube-router once the node is registered (it reads its Node)."""
        assert self.plane is not None and self.kubelet is not None and self.kube_proxy is not None \
            and self.kube_router is not None, "configure() first"
        try:
            self.containerd.start()
            for image in images:
                self.containerd.import_image(image)
            self.kubelet.start()
            self.kube_proxy.start()
            self.plane.wait_for_node(NODE_NAME, timeout=120)
            self.kube_router.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for part in (self.kube_router, self.kube_proxy, self.kubelet):
            if part is not None:
                part.stop()
        if self.containerd.running:
            self.containerd.stop_containers()
        self.containerd.stop()
        cleanup_host()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _cgroup_v1_controllers() -> list[Path]:
    root = Path("/sys/fs/cgroup")
    return [p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and (p / "cgroup.procs").exists()]


def _kill_cgroup_tree(root: Path) -> None:
    """SIGKILL every process under the cgroup `root`, then remove its cgroups deepest first."""
    if not root.exists():
        return
    for _ in range(20):
        pids = [int(pid) for procs in root.rglob("cgroup.procs") for pid in procs.read_text().split()]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    for directory in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            directory.rmdir()
    with contextlib.suppress(OSError):
        root.rmdir()


def _shim_pids() -> list[int]:
    """containerd shims started for this node's containerd (they outlive it when killed)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            ours = str(RUN_DIR).encode() in b" ".join(cmdline)
            # The cached binary is named with its version (containerd-shim-runc-v2-v2.3.7).
            if b"containerd-shim-runc-v2" in cmdline[0] and ours:
                pids.append(int(proc.name))
    return pids


def cleanup_host() -> None:
    """Remove what a node leaves on the host: containers, shims, mounts, the bridge, iptables rules.

    Safe to call when nothing is there; it is what makes a killed test run harmless to the next.
    """
    for pid in _shim_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for controller in _cgroup_v1_controllers():
        _kill_cgroup_tree(controller / CGROUP_ROOT)
    # Mounts (overlay rootfs, shm, secret tmpfs, network namespaces) under the node's directories.
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith((str(RUN_DIR), str(STATE_DIR)))), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)
    with contextlib.suppress(ServiceError):  # no kube-proxy built: no rules of its to remove
        subprocess.run([tool("kube-proxy"), "--cleanup"], capture_output=True, check=False, timeout=60)
    # kube-router's chains start with KUBE- too; its ipsets go once no rule refers to them.
    _remove_chains(("CNI-", "KUBE-"))
    for ipset in _kube_router_ipsets():
        subprocess.run(["ipset", "destroy", ipset], capture_output=True, check=False)


def _kube_router_ipsets() -> list[str]:
    if shutil.which("ipset") is None:
        return []
    names = subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True, check=False).stdout.split()
    return [name for name in names if name.startswith(KUBE_ROUTER_IPSET_PREFIXES)]


def leftovers() -> list[str]:
    """What of a node is still on the host (empty after `cleanup_host`): shims, mounts, the bridge,
    kube-router's ipsets."""
    found = [f"containerd shim {pid}" for pid in _shim_pids()]
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    found += [f"mount {m}" for m in mounts if m.startswith((str(RUN_DIR), str(STATE_DIR)))]
    if Path("/sys/class/net", BRIDGE).exists():
        found.append(f"bridge {BRIDGE}")
    found += [f"ipset {name}" for name in _kube_router_ipsets()]
    return found


def _remove_chains(prefixes: tuple[str, ...]) -> None:
    """Drop iptables chains the node made: the CNI plugins' (masquerade, firewall, hostport), the
    kubelet's and kube-proxy's (`KUBE-FIREWALL`, canaries) that `kube-proxy --cleanup` leaves, and
    kube-router's (`KUBE-ROUTER-*`, `KUBE-POD-FW-*`, `KUBE-NWPLCY-*`)."""
    for table in ("nat", "filter", "mangle"):
        rules = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True, check=False).stdout
        chains = {line[1:].split()[0] for line in rules.splitlines()
                  if line.startswith(":") and line[1:].startswith(prefixes)}
        for line in rules.splitlines():
            # Jumps into a CNI chain from the built-in chains go first, then the chains themselves.
            rule = shlex.split(line)
            if rule[:1] == ["-A"] and not rule[1].startswith(prefixes) and any(f"-j {c}" in line for c in chains):
                subprocess.run(["iptables", "-t", table, "-D", *rule[1:]], capture_output=True, check=False)
        for chain in chains:
            subprocess.run(["iptables", "-t", table, "-F", chain], capture_output=True, check=False)
        for chain in chains:
            subprocess.run(["iptables", "-t", table, "-X", chain], capture_output=True, check=False)


__all__ = ["CLUSTER_DNS", "NODE_IP", "NODE_NAME", "NODE_PORT_RANGE", "PAUSE_IMAGE", "Node", "NodeError", "cleanup_host",
           "leftovers", "unsupported_reason"]
