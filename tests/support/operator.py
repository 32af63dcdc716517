"""Driving the operator in tests: its process, the custom resources tests apply, and what they wait for.

The fixtures that install and run it live in tests/operator/conftest.py; everything a test module
imports is here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.kube import KubeCluster
from veza_local.controlplane import tool, wait_for
from veza_local.services import free_port

REPO = Path(__file__).resolve().parents[2]
OPERATOR_NAMESPACE = "veza-system"
OPERATOR_SA = "veza"
# A release and peering of their own, so the chart tests' renders of the same chart never collide.
RELEASE = "veza-e2e"
PEERING = "veza-e2e"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SA}"


class OperatorProcess:
    """`veza operator` as a child process, authenticated as the chart's ServiceAccount."""

    def __init__(self, kubeconfig: Path, log_path: Path, *, peering: str | None = PEERING,
                 extra_env: dict[str, str] | None = None, namespaces: Sequence[str] = (),
                 veza: Sequence[str] = (sys.executable, "-m", "veza_cli.main")) -> None:
        self.kubeconfig = kubeconfig
        self.namespaces = list(namespaces)  # watched; none: the whole cluster
        self.veza = list(veza)  # the `veza` command (another environment's console script)
        self.log_path = log_path
        self.peering = peering
        self.extra_env = extra_env or {}
        self.liveness_port = free_port()
        self.metrics_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "VEZA_RESYNC_SECONDS": "3",
               "VEZA_PEERING_LIFETIME": "6", "VEZA_CAPABILITY_TTL": "2", **self.extra_env}
        args = [*self.veza, "operator", "--bind", "127.0.0.1",
                "--liveness-port", str(self.liveness_port), "--metrics-port", str(self.metrics_port)]
        args += ["--peering", self.peering] if self.peering else ["--standalone"]
        for namespace in self.namespaces:
            args += ["--namespace", namespace]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        wait_for(self.alive, timeout=30, message="operator liveness endpoint")
        return self

    def alive(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"operator exited; log:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as resp:
            return resp.read().decode()

    def reconciles(self, result: str | None = None) -> float:
        """Reconciles run so far, of every kind, with outcome `result` or any (veza_operator_reconciles_total)."""
        outcome = "" if result is None else f'result="{result}"'
        return sum(float(line.rsplit(" ", 1)[1]) for line in self.metrics().splitlines()
                   if line.startswith("veza_operator_reconciles_total{") and outcome in line)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, sig)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def standing_by(self) -> bool:
        """Whether the replica's last word on peering was that it stands by (a peering replica starts so)."""
        state = self.peering is not None
        for line in self.log_path.read_text(errors="replace").splitlines():
            if "peering: standing by" in line:
                state = True
            elif "peering: active" in line:
                state = False
        return state

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""




def connections_secret(ns: str, name: str = "veza-connections", platform_name: str = "demo") -> dict[str, Any]:
    """The platform's connection Secret, labelled for it (the operator uses no other)."""
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": ns, "labels": {"veza.io/usable-by": platform_name}},
            "stringData": {"postgres-uri": "postgresql://veza:pw@postgres:5432/veza",
                           "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}}


def platform(ns: str, name: str = "demo", **spec: Any) -> dict[str, Any]:
    body = {
        "connections": {
            "postgres": {"uriSecretRef": {"name": "veza-connections", "key": "postgres-uri"}},
            "redis": {"url": "redis://redis:6379/0"},
            "nats": {"url": "nats://nats:4222"},
            "s3": {"bucket": "veza-test", "credentialsSecretRef": {"name": "veza-connections"}},
        },
        "ingress": {"host": "veza.test"},
        "api": {"replicas": 1},
    }
    body.update(spec)
    return {"apiVersion": "veza.io/v1alpha1", "kind": "VezaPlatform", "metadata": {"name": name, "namespace": ns},
            "spec": body}


def room(ns: str, name: str, platform_name: str = "demo", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "veza.io/v1alpha1", "kind": "ChatRoom", "metadata": {"name": name, "namespace": ns},
            "spec": {"platformRef": {"name": platform_name}, **spec}}


def channel(ns: str, name: str, platform_name: str = "demo", **spec: Any) -> dict[str, Any]:
    body = {"platformRef": {"name": platform_name}, "source": {"type": "live"}, **spec}
    return {"apiVersion": "veza.io/v1alpha1", "kind": "StreamChannel",
            "metadata": {"name": name, "namespace": ns}, "spec": body}


def condition(obj: dict[str, Any] | None, kind: str = "Ready") -> dict[str, Any] | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            return dict(cond)
    return None


def wait_condition(kube: KubeCluster, resource: str, name: str, ns: str, *, status: str = "True",
                   reason: str | None = None, timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = kube.get(resource, name, ns)
        cond = condition(obj)
        if cond and cond["status"] == status and (reason is None or cond["reason"] == reason):
            return obj
        return None

    try:
        return wait_for(check, timeout=timeout, message=f"{resource}/{name} Ready={status} {reason or ''}")
    except TimeoutError:
        obj = kube.get(resource, name, ns)
        status = json.dumps((obj or {}).get("status"), indent=1)
        raise AssertionError(f"{resource}/{name} did not reach the condition; status: {status}") from None


def writes_by(kube: KubeCluster, user: str, since: int) -> list[dict[str, Any]]:
    """Write requests `user` made after the `since`-th audit event (local control plane only)."""
    assert kube.plane is not None
    return [e for e in kube.plane.audit_events()[since:] if e.get("user", {}).get("username") == user]


def quiet(kube: KubeCluster, ns: str, *, for_seconds: float = 3.0, timeout: float = 60) -> int:
    """Wait until the operator has written nothing in `ns` for `for_seconds` (one resync period here):
    the last status echoes have settled. Returns the audit log position later writes count from."""
    assert kube.plane is not None
    seen = {"writes": -1, "since": time.monotonic()}

    def settled() -> int | None:
        events = kube.plane.audit_events() if kube.plane is not None else []
        writes = len([e for e in events if e.get("user", {}).get("username") == OPERATOR_USER
                      and e.get("objectRef", {}).get("namespace") == ns])
        if writes != seen["writes"]:
            seen.update(writes=writes, since=time.monotonic())
            return None
        return len(events) if time.monotonic() - seen["since"] >= for_seconds else None

    return int(wait_for(settled, timeout=timeout, interval=0.25, message=f"the operator quiet in {ns}"))


def owners_in_cluster(kube: KubeCluster) -> int:
    out = kube.kubectl("get", "vezaplatforms,chatrooms,streamchannels", "--all-namespaces", "-o", "name")
    return len(out.split())


def resync_rounds(kube: KubeCluster, operator: OperatorProcess, rounds: int = 2, timeout: float = 60) -> None:
    """Wait until the operator has reconciled as often as `rounds` full resyncs take.

    A resync reconciles every custom resource in the cluster; this is how a test proves that
    reconciles of its own resources ran, and changed nothing, without guessing a time.
    """
    start, owners = operator.reconciles(), owners_in_cluster(kube)
    wait_for(lambda: operator.reconciles() - start >= rounds * owners, timeout=timeout,
             message=f"{rounds} resync rounds of {owners} resources")


def active_identities(kube: KubeCluster) -> dict[str, int]:
    """The replicas in the peering record, with their priorities."""
    peering = kube.get("clusterkopfpeering", PEERING) or {}
    return {ident: info.get("priority", 0) for ident, info in (peering.get("status") or {}).items() if info}


OWNER_PLURALS = ("vezaplatforms", "chatrooms", "streamchannels")


def ready_states(kube: KubeCluster, ns: str) -> dict[str, tuple[str, str]]:
    """Every custom resource of `ns` with its Ready condition's (status, reason)."""
    items = json.loads(kube.kubectl("get", ",".join(OWNER_PLURALS), "-n", ns, "-o", "json"))["items"]
    states = {}
    for item in items:
        cond = condition(item) or {}
        states[f"{item['kind']}/{item['metadata']['name']}"] = (cond.get("status", ""), cond.get("reason", ""))
    return states


class ConditionWatch:
    """Watches (`kubectl get --watch-only`) the custom resources of a namespace and records the Ready
    condition of every change it sees; `changes()` lists those that differ from the state at start."""

    def __init__(self, kube: KubeCluster, ns: str) -> None:
        self.kube = kube
        self.ns = ns
        self.lines: list[str] = []
        self.processes: list[subprocess.Popen[str]] = []
        self.threads: list[threading.Thread] = []
        self.start_states: dict[str, tuple[str, str]] = {}

    def __enter__(self) -> ConditionWatch:
        self.start_states = ready_states(self.kube, self.ns)
        template = ('{.kind}/{.metadata.name} {.status.conditions[?(@.type=="Ready")].status} '
                    '{.status.conditions[?(@.type=="Ready")].reason}{"\\n"}')
        for plural in OWNER_PLURALS:
            proc = subprocess.Popen([tool("kubectl"), f"--kubeconfig={self.kube.kubeconfig}", "get", plural,
                                     "-n", self.ns, "--watch-only", "-o", f"jsonpath={template}"],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
            thread.start()
            self.processes.append(proc)
            self.threads.append(thread)
        time.sleep(1)  # the watches are established (a change before this would go unseen)
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip():
                self.lines.append(line.strip())

    def __exit__(self, *exc: object) -> None:
        for proc in self.processes:
            proc.terminate()
            proc.wait(10)
        for thread in self.threads:
            thread.join(5)

    def changes(self) -> list[str]:
        seen = []
        for line in self.lines:
            name, _, rest = line.partition(" ")
            status, _, reason = rest.partition(" ")
            if self.start_states.get(name) != (status, reason):
                seen.append(line)
        return seen
