"""Gateway API HTTPRoutes against a real API server serving the Gateway API's standard-channel CRDs.

No Gateway controller runs here: where a test needs the Gateway's verdict on a route, it writes the
route's status itself, as the controller would (kwok plays the kubelet in the same way).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.kube import KubeCluster
from tests.support.operator import (
    OPERATOR_USER,
    OperatorProcess,
    channel,
    condition,
    connections_secret,
    platform,
    quiet,
    resync_rounds,
    room,
    wait_condition,
    writes_by,
)
from veza_local.controlplane import tool, wait_for

pytestmark = pytest.mark.kube

HTTPROUTE = "httproutes.gateway.networking.k8s.io"
CRDS_FILE = "gateway-api-crds.yaml"  # the standard channel's CRDs, next to the control-plane binaries
GROUP = "gateway.networking.k8s.io"


def gateway_api_served(kube: KubeCluster) -> bool:
    return kube.get("customresourcedefinition", HTTPROUTE) is not None


def gateway_crd_names() -> list[str]:
    return [doc["metadata"]["name"] for doc in yaml.safe_load_all(Path(tool(CRDS_FILE)).read_text()) if doc]


def install_gateway_api(kube: KubeCluster) -> None:
    kube.kubectl("apply", "--server-side", "--field-manager=veza-tests", "-f", tool(CRDS_FILE))
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                 *[f"crd/{n}" for n in gateway_crd_names()])


@pytest.fixture(scope="module")
def gateway_api_cleanup(kube: KubeCluster, operator: OperatorProcess) -> Iterator[None]:
    """Removes the Gateway API CRDs after this module when it installed them."""
    preinstalled = gateway_api_served(kube)
    yield
    if not preinstalled and gateway_api_served(kube):
        # An API vanishing under a running watch is fatal to kopf (docs/operator.md): the shared operator is
        # restarted around the removal, as Kubernetes would restart its pod.
        operator.stop()
        kube.kubectl("delete", "--ignore-not-found", *[f"crd/{n}" for n in gateway_crd_names()])
        operator.start()


@pytest.fixture(scope="module")
def gateway_api(kube: KubeCluster, operator: OperatorProcess, gateway_api_cleanup: None) -> None:
    """The Gateway API served and watched by the operator.

    kopf may miss an API that appears while it runs (docs/operator.md, "Optional APIs"): the operator is
    restarted once the CRDs are there, as the docs tell platform engineers to do.
    """
    if not gateway_api_served(kube):
        install_gateway_api(kube)
    operator.stop()
    operator.start()


def route(kube: KubeCluster, name: str, ns: str) -> dict[str, Any] | None:
    return kube.get(HTTPROUTE, name, ns)


def set_route_verdict(kube: KubeCluster, name: str, ns: str, parent: dict[str, Any], *, accepted: bool,
                      message: str = "") -> None:
    """Write the route's status as the Gateway's controller does."""
    obj = route(kube, name, ns)
    assert obj is not None, f"HTTPRoute {name} missing"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    gen = obj["metadata"]["generation"]
    status = {"parents": [{"parentRef": parent, "controllerName": "example.com/gateway-controller", "conditions": [
        {"type": "Accepted", "status": "True" if accepted else "False",
         "reason": "Accepted" if accepted else "NotAllowedByListeners", "message": message,
         "observedGeneration": gen, "lastTransitionTime": stamp},
        {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs", "message": "",
         "observedGeneration": gen, "lastTransitionTime": stamp}]}]}
    kube.kubectl("patch", HTTPROUTE, name, "-n", ns, "--subresource=status", "--type=merge",
                 "-p", json.dumps({"status": status}))


def wait_all_ready(kube: KubeCluster, ns: str, room_name: str | None = None, channel_name: str | None = None) -> None:
    wait_condition(kube, "vezaplatform", "demo", ns)
    if room_name:
        wait_condition(kube, "chatroom", room_name, ns)
    if channel_name:
        wait_condition(kube, "streamchannel", channel_name, ns)


# Runs first: it needs the cluster without the Gateway API, and installs it halfway.
@pytest.mark.usefixtures("gateway_api_cleanup")
def test_gateway_named_without_the_api_is_reported_and_heals_once_installed(kube: KubeCluster, ns: str) -> None:
    if gateway_api_served(kube):
        pytest.skip("the cluster already serves the Gateway API")
    kube.apply(connections_secret(ns), platform(ns, gateway={"name": "public"}),
               room(ns, "lobby", placement="Dedicated"))
    p = wait_condition(kube, "vezaplatform", "demo", ns, status="False", reason="GatewayAPINotInstalled")
    assert condition(p, "Degraded")["status"] == "True"
    assert "install the Gateway API CRDs" in condition(p)["message"]
    wait_condition(kube, "chatroom", "lobby", ns, status="False", reason="GatewayAPINotInstalled")
    # Everything else is still there: the workers, and the Ingresses clients use meanwhile.
    for kind, name in [("deployment", "chat-lobby"), ("ingress", "chat-lobby"), ("ingress", "demo")]:
        assert kube.get(kind, name, ns) is not None, f"{kind}/{name} missing"

    # The running operator notices the API by itself (no restart): routes appear, the reason goes.
    install_gateway_api(kube)
    wait_all_ready(kube, ns, room_name="lobby")
    for name in ("demo", "chat-lobby"):
        assert wait_for(lambda name=name: route(kube, name, ns), timeout=20, message=f"HTTPRoute {name}")


@pytest.mark.usefixtures("gateway_api")
def test_routes_per_platform_room_and_channel_follow_the_spec(kube: KubeCluster, ns: str) -> None:
    gateway = {"name": "public", "namespace": "edge", "sectionName": "https"}
    kube.apply(connections_secret(ns), platform(ns, gateway=gateway), room(ns, "general", placement="Dedicated"),
               channel(ns, "radio"))
    wait_all_ready(kube, ns, "general", "radio")
    expected = {"demo": ("/", "demo-api"), "chat-general": ("/chat/general", "chat-general"),
                "stream-radio": ("/stream/radio", "stream-radio")}
    for name, (path, service) in expected.items():
        r = wait_for(lambda name=name: route(kube, name, ns), timeout=20, message=f"HTTPRoute {name}")
        assert r["spec"]["parentRefs"] == [{"group": GROUP, "kind": "Gateway", "name": "public",
                                            "namespace": "edge", "sectionName": "https"}]
        assert r["spec"]["hostnames"] == ["veza.test"]
        (rule,) = r["spec"]["rules"]
        assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": path}}]
        assert [(b["kind"], b["name"], b["port"]) for b in rule["backendRefs"]] == [("Service", service, 80)]
        assert "filters" not in rule, "no rewrite: workers serve under their prefix"
        owner = r["metadata"]["ownerReferences"][0]
        assert owner["controller"] is True and owner["kind"] in {"VezaPlatform", "ChatRoom", "StreamChannel"}
        ingress = kube.get("ingress", name, ns)
        assert ingress is not None and r["metadata"]["labels"] == ingress["metadata"]["labels"]

    # Gateway only: the Ingresses go, the routes stay.
    kube.apply(platform(ns, gateway=gateway, ingress={"host": "veza.test", "enabled": False}))
    wait_for(lambda: all(kube.get("ingress", name, ns) is None for name in expected), timeout=30,
             message="Ingresses removed")
    assert all(route(kube, name, ns) is not None for name in expected)

    # No Gateway any more (and the Ingress back on by default): the routes are pruned.
    kube.apply(platform(ns))
    wait_for(lambda: all(route(kube, name, ns) is None for name in expected), timeout=30,
             message="HTTPRoutes pruned")
    wait_for(lambda: all(kube.get("ingress", name, ns) is not None for name in expected), timeout=30,
             message="Ingresses back")


@pytest.mark.usefixtures("gateway_api")
def test_route_the_gateway_does_not_accept_degrades_its_owner(kube: KubeCluster, ns: str) -> None:
    kube.apply(connections_secret(ns), platform(ns, gateway={"name": "public"}),
               room(ns, "general", placement="Dedicated"))
    wait_all_ready(kube, ns, "general")
    parent = {"group": GROUP, "kind": "Gateway", "name": "public", "namespace": ns}
    wait_for(lambda: route(kube, "chat-general", ns), timeout=20, message="HTTPRoute chat-general")

    set_route_verdict(kube, "chat-general", ns, parent, accepted=False,
                      message="no listener of Gateway public admits routes from this namespace")
    r = wait_condition(kube, "chatroom", "general", ns, status="False", reason="RouteNotAccepted")
    assert condition(r, "Degraded")["status"] == "True"
    assert "no listener of Gateway public admits routes from this namespace" in condition(r)["message"]
    assert condition(kube.get("vezaplatform", "demo", ns))["status"] == "True", "the platform's route is fine"

    set_route_verdict(kube, "chat-general", ns, parent, accepted=True)
    wait_condition(kube, "chatroom", "general", ns, reason="WorkersReady")


@pytest.mark.usefixtures("gateway_api")
def test_no_writes_when_nothing_changes_with_routes(kube: KubeCluster, ns: str, operator: OperatorProcess) -> None:
    if kube.plane is None:
        pytest.skip("counting write requests needs the local control plane's audit log")
    kube.apply(connections_secret(ns), platform(ns, gateway={"name": "public"}),
               room(ns, "quiet", placement="Dedicated"), channel(ns, "still"))
    wait_all_ready(kube, ns, "quiet", "still")
    parent = {"group": GROUP, "kind": "Gateway", "name": "public", "namespace": ns}
    for name in ("demo", "chat-quiet", "stream-still"):
        wait_for(lambda name=name: route(kube, name, ns), timeout=20, message=f"HTTPRoute {name}")
        set_route_verdict(kube, name, ns, parent, accepted=True)
    since = quiet(kube, ns)  # the last status echoes settled
    resync_rounds(kube, operator, 2)  # every resource reconciled again, twice (VEZA_RESYNC_SECONDS=3)
    writes = [w for w in writes_by(kube, OPERATOR_USER, since) if w["objectRef"].get("namespace") == ns]
    assert writes == [], [(w["verb"], w["objectRef"]) for w in writes]
