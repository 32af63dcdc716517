"""Prometheus against the real pods: a real Prometheus scrapes every pod the chart's ServiceMonitor and the
platform's PodMonitor select (as static targets, with the labels those objects attach), real traffic goes
through the front door, and every Grafana panel's query returns series. And the platform's NetworkPolicies
let a Prometheus in a namespace labelled `veza.io/metrics=true` scrape the workers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from tests.monitoring.fleet import wait_for_scrapes, wait_for_targets
from tests.monitoring.support import dashboard, prometheus_binary
from tests.monitoring.test_dashboard import problems
from tests.support.e2e import OPERATOR_NAMESPACE, Account, Platform, connect_chat

from veza_local.prometheus import PrometheusService, ScrapeTarget

METRICS_NAMESPACE = "veza-e2e-monitoring"
# GET /metrics from inside a pod, again each second until it answers (kube-router admits a new pod's address
# some moments after the pod starts), then the status line or the last error.
SCRAPE = """
import json, socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
outcome, deadline = "never tried", time.monotonic() + 45
while time.monotonic() < deadline:
    try:
        conn = socket.create_connection((host, int(port)), timeout=3)
        conn.sendall(b"GET /metrics HTTP/1.0\\r\\nHost: probe\\r\\n\\r\\n")
        outcome = "open " + conn.recv(200).decode(errors="replace").splitlines()[0]
        break
    except OSError as error:
        outcome = type(error).__name__
        time.sleep(1)
print(json.dumps({sys.argv[1]: outcome}))
"""


def _targets(platform: Platform) -> list[ScrapeTarget]:
    targets = []
    ready = set(platform.ready_pods("veza.io/platform"))  # not the migration Job's, nor a pod going away
    for pod in platform.pods("veza.io/platform"):
        labels = pod["metadata"]["labels"]
        if pod["metadata"]["name"] not in ready:
            continue
        targets.append(ScrapeTarget("veza-workers", f"{pod['status']['podIP']}:8080", {
            "namespace": platform.namespace, "pod": pod["metadata"]["name"],
            "component": labels["app.kubernetes.io/component"], "platform": labels["veza.io/platform"]}))
    operators = json.loads(platform.kube.kubectl("-n", OPERATOR_NAMESPACE, "get", "pods", "-l",
                                                 "app.kubernetes.io/component=operator", "-o", "json"))["items"]
    for pod in operators:
        targets.append(ScrapeTarget("veza-operator", f"{pod['status']['podIP']}:9090", {
            "namespace": OPERATOR_NAMESPACE, "pod": pod["metadata"]["name"]}))
    return targets


async def _traffic(platform: Platform) -> None:
    """What the panels show: an account, a chat message and a refused frame, a listener."""
    async with aiohttp.ClientSession() as session:
        ada = await Account(platform, "Ada").register(session)
        token = await ada.service_token(session, "veza-chat")
        chat = await connect_chat(platform, token)
        try:
            await chat.send({"type": "send", "cid": "monitoring-1", "text": "for the dashboard"})
            await chat.expect("ack", cid="monitoring-1")
            await chat.ws.send_str(json.dumps({"type": "send", "cid": "monitoring-2"}))  # no text: an error frame
            await chat.expect("error")
        finally:
            await chat.close()
        async with session.get(platform.url("/stream/radio/mp3-128"), headers=platform.headers) as response:
            assert response.status == 200
            await response.content.readexactly(16_000)


@pytest.fixture(scope="module")
def prometheus(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusService]:
    prometheus_binary("prometheus")
    with PrometheusService(tmp_path_factory.mktemp("prometheus"), _targets(platform), scrape_interval="2s") as service:
        try:
            wait_for_targets(service)
        except TimeoutError:
            raise AssertionError([(t["scrapeUrl"], t["health"], t["lastError"])
                                  for t in service.api("targets")["activeTargets"]]) from None
        asyncio.run(_traffic(platform))
        wait_for_scrapes(service)
        yield service


def test_every_pod_is_scraped_and_every_panel_returns_series(platform: Platform, prometheus: PrometheusService,
                                                             tmp_path: Path) -> None:
    health = prometheus.healthy_targets()
    assert health and set(health.values()) == {"up"}, health
    components = {t["metric"]["component"] for t in prometheus.query('up{job="veza-workers"}')}
    assert components >= {"api", "chat", "stream"}, components
    assert problems(dashboard(), prometheus) == []


def test_a_prometheus_in_the_metrics_namespace_may_scrape_the_workers(platform: Platform) -> None:
    """From a namespace labelled veza.io/metrics=true the workers' port answers; the same pod elsewhere is
    refused (test_network_policies.py's control pod)."""
    api = json.loads(platform.kubectl("get", "pod", platform.ready_pods("app.kubernetes.io/component=api")[0],
                                      "-o", "json"))["status"]["podIP"]
    platform.kube.kubectl("apply", "-f", "-", input=yaml.safe_dump({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": METRICS_NAMESPACE, "labels": {"veza.io/metrics": "true",
                                                           "pod-security.kubernetes.io/enforce": "restricted"}}}))
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "scraper", "namespace": METRICS_NAMESPACE},
        "spec": {
            "restartPolicy": "Never", "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "probe", "image": platform.image, "command": ["python", "-c", SCRAPE, f"{api}:8080"],
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}}],
        },
    }
    kubectl = platform.kube.kubectl
    try:
        kubectl("apply", "-f", "-", input=yaml.safe_dump(pod))
        kubectl("-n", METRICS_NAMESPACE, "wait", "--for=jsonpath={.status.phase}=Succeeded", "--timeout=180s",
                "pod/scraper")
        outcome = json.loads(kubectl("-n", METRICS_NAMESPACE, "logs", "scraper").strip().splitlines()[-1])
        assert outcome[f"{api}:8080"].startswith("open HTTP/1.0 200"), outcome
    finally:
        kubectl("delete", "namespace", METRICS_NAMESPACE, "--ignore-not-found", "--wait=false")
