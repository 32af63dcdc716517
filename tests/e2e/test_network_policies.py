"""The platform's NetworkPolicies, enforced on the node (kube-router), against a compromised worker.

The attack: code running in a worker pod (here `kubectl exec` into an API pod: the project's own
image, ServiceAccount and labels) reaches for the cloud's metadata endpoint (169.254.169.254, which
hands out the node's credentials) or for a service on the node that the platform never declared.
Both must be refused, while what the platform declared keeps working.

The targets really answer pods: a pod of the same image in the same namespace, without the
platform's labels (no policy selects it), reaches all of them. So a refusal below is the policy's
doing, not a missing route.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest
import yaml
from tests.support.e2e import PROBE, Platform, metadata_address, stand_in_servers

from veza_local.node import NODE_IP, NODE_PORT_RANGE
from veza_local.services import free_port

CONTROL_POD = "netpol-control"


def _undeclared_port(platform: Platform) -> int:
    """A free port of the node that no backend declares, outside the node-port range (kube-router admits
    pods to the node's ports in that range, as it must for NodePort Services)."""
    low, high = map(int, NODE_PORT_RANGE.split("-"))
    while True:
        port = free_port(NODE_IP)
        if port not in platform.backend_ports.values() and not low <= port <= high:
            return port


@pytest.fixture(scope="module")
def targets(platform: Platform) -> Iterator[dict[str, str]]:
    """Stand-ins that answer HTTP 200: the metadata endpoint on its port (80) and on the port the
    platform admits to the whole internet (S3's), and a service on the node's address on a port no
    backend declares."""
    s3_port = platform.backend_ports["minio"]
    undeclared = _undeclared_port(platform)
    with metadata_address() as metadata:
        addresses = [(metadata, 80), (metadata, s3_port), (NODE_IP, undeclared)]
        with stand_in_servers(addresses):
            for address in addresses:  # they answer this host (nothing governs it)
                socket.create_connection(address, timeout=2).close()
            yield {"metadata": f"{metadata}:80", "metadata_on_s3_port": f"{metadata}:{s3_port}",
                   "undeclared_port": f"{NODE_IP}:{undeclared}"}


def _probe_from_worker(platform: Platform, pod: str, *targets: str) -> dict[str, str]:
    result: dict[str, str] = json.loads(platform.kubectl("exec", pod, "--", "python", "-c", PROBE, *targets))
    return result


def _probe_from_control_pod(platform: Platform, *targets: str) -> dict[str, str]:
    """The same probe from a pod of the worker image and namespace that no NetworkPolicy selects."""
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": CONTROL_POD, "labels": {"app.kubernetes.io/name": "netpol-control"}},
        "spec": {
            "restartPolicy": "Never", "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "probe", "image": platform.image, "command": ["python", "-c", PROBE, *targets],
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}}],
        },
    }
    platform.kubectl("delete", "pod", CONTROL_POD, "--ignore-not-found", "--wait=true")
    platform.kubectl("apply", "-f", "-", input=yaml.safe_dump(pod))
    try:
        deadline = time.monotonic() + 120
        while (phase := platform.kubectl("get", "pod", CONTROL_POD, "-o", "jsonpath={.status.phase}")) \
                not in ("Succeeded", "Failed"):
            assert time.monotonic() < deadline, f"the control pod is still {phase}"
            time.sleep(1)
        logs = platform.kubectl("logs", CONTROL_POD)
        assert phase == "Succeeded", logs
        result: dict[str, str] = json.loads(logs.strip().splitlines()[-1])
        return result
    finally:
        platform.kubectl("delete", "pod", CONTROL_POD, "--ignore-not-found", "--wait=false")


def _refused(outcome: str) -> bool:
    return outcome in ("ConnectionRefusedError", "TimeoutError")


def test_a_worker_cannot_reach_the_metadata_endpoint_or_undeclared_ports(
        platform: Platform, targets: dict[str, str]) -> None:
    worker = platform.ready_pods("app.kubernetes.io/component=api")[0]
    outcome = _probe_from_worker(platform, worker, *targets.values())
    for name, target in targets.items():
        assert _refused(outcome[target]), (name, target, outcome)


def test_what_the_platform_declares_still_answers_the_worker(platform: Platform) -> None:
    """The backing services by their Service names, S3 on the node's address directly, and the
    other API replica's HTTP port (the workers' own rule)."""
    worker, other = platform.ready_pods("app.kubernetes.io/component=api")[:2]
    other_ip = json.loads(platform.kubectl("get", "pod", other, "-o", "json"))["status"]["podIP"]
    admitted = ["postgres:5432", "redis:6379", "nats:4222", "minio:9000",
                f"{NODE_IP}:{platform.backend_ports['minio']}", f"{other_ip}:8080"]
    outcome = _probe_from_worker(platform, worker, *admitted)
    assert all(outcome[target].startswith("open") for target in admitted), outcome


def test_the_refused_targets_answer_a_pod_no_policy_selects(platform: Platform, targets: dict[str, str]) -> None:
    """The control: the same image in the same namespace, without the platform's labels, reaches every
    stand-in (so the refusals above are the egress policy's), and is itself refused by the workers'
    ingress policy (only the front door and the platform's own pods reach port 8080)."""
    api_ip = json.loads(platform.kubectl("get", "pod", platform.ready_pods("app.kubernetes.io/component=api")[0],
                                         "-o", "json"))["status"]["podIP"]
    outcome = _probe_from_control_pod(platform, *targets.values(), f"{api_ip}:8080")
    for name, target in targets.items():
        assert outcome[target].startswith("open HTTP/1.0 200"), (name, target, outcome)
    assert _refused(outcome[f"{api_ip}:8080"]), outcome
