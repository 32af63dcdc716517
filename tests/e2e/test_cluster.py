"""The platform as installed: operator pod, migrations, Ready resources, Pod Security, DNS, JSON logs."""

from __future__ import annotations

import json

import yaml
from tests.support.e2e import OPERATOR_NAMESPACE, Platform


def test_operator_runs_as_a_pod_and_every_resource_is_ready(platform: Platform) -> None:
    operators = platform.kube.kubectl("-n", OPERATOR_NAMESPACE, "get", "pods", "-o", "json")
    pods = json.loads(operators)["items"]
    assert pods and all(p["status"]["phase"] == "Running" for p in pods), [p["status"] for p in pods]
    assert {c["image"] for p in pods for c in p["spec"]["containers"]} == {platform.image}
    for kind in ("vezaplatform/demo", "chatroom/general", "streamchannel/radio"):
        status = json.loads(platform.kubectl("get", kind, "-o", "json"))["status"]
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True", (kind, status)
    deployments = json.loads(platform.kubectl("get", "deployments", "-o", "json"))["items"]
    assert {d["metadata"]["name"] for d in deployments} >= {"demo-api", "chat-general", "stream-radio"}
    for d in deployments:
        assert d["status"].get("availableReplicas") == d["spec"]["replicas"], d["metadata"]["name"]
        assert {c["image"] for c in d["spec"]["template"]["spec"]["containers"]} == {platform.image}


def test_the_migration_job_completed(platform: Platform) -> None:
    jobs = json.loads(platform.kubectl("get", "jobs", "-o", "json"))["items"]
    migrations = [j for j in jobs if "migrat" in j["metadata"]["name"]]
    assert migrations, [j["metadata"]["name"] for j in jobs]
    assert all(j["status"].get("succeeded") == 1 for j in migrations), [j["status"] for j in migrations]


def test_pod_security_restricted_is_enforced(platform: Platform) -> None:
    privileged = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "privileged"},
                  "spec": {"containers": [{"name": "x", "image": platform.image,
                                           "securityContext": {"privileged": True}}]}}
    out = platform.kube.run("kubectl", "-n", platform.namespace, "apply", "-f", "-",
                            input=yaml.safe_dump(privileged), check=False)
    assert out.returncode != 0 and "violates PodSecurity" in out.stderr, out.stderr
    for pod in platform.pods("app.kubernetes.io/name=veza"):
        for container in pod["spec"]["containers"]:
            ctx = container.get("securityContext", {})
            assert ctx.get("readOnlyRootFilesystem") is True, (pod["metadata"]["name"], ctx)
            assert ctx.get("allowPrivilegeEscalation") is False


def test_pods_resolve_service_names(platform: Platform) -> None:
    """Cluster DNS: the workers reach PostgreSQL, Redis, NATS and S3 by the names in examples/."""
    pod = platform.ready_pods("app.kubernetes.io/component=api")[0]
    out = platform.kubectl("exec", pod, "--", "python", "-c",
                           "import socket;print(*(socket.gethostbyname(n) for n in "
                           "('postgres', 'nats.veza-e2e.svc.cluster.local', 'minio', 'redis')))")
    addresses = out.split()
    expected = [json.loads(platform.kubectl("get", "service", name, "-o", "json"))["spec"]["clusterIP"]
                for name in ("postgres", "nats", "minio", "redis")]
    assert addresses == expected


def test_logs_are_json(platform: Platform) -> None:
    pods = platform.pods("app.kubernetes.io/name=veza")
    assert pods
    for pod in pods:
        name = pod["metadata"]["name"]
        lines = [line for line in platform.kubectl("logs", name, "--tail=200").splitlines() if line.strip()]
        assert lines, f"{name} logged nothing"
        for line in lines:
            record = json.loads(line)  # fails the test on any plain-text line
            assert isinstance(record, dict) and record, (name, line)
