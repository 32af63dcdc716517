"""Pure builders: spec in, manifests out; and the reconcile queue (no cluster)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from tests.support.operator import platform
from tests.support.waiting import wait_for
from veza_core.specs import ChatRoomSpec, StreamChannelSpec
from veza_operator import kinds
from veza_operator import platform as platform_mod
from veza_operator.chatroom import CHAT_WORKERS, purge_job
from veza_operator.conditions import Health, conditions
from veza_operator.controller import Context, Key, Reconciler, Store
from veza_operator.frontdoor import route_health
from veza_operator.kube import is_subset
from veza_operator.models import ChatPool, ChatSpec, VezaPlatformSpec
from veza_operator.naming import Owner
from veza_operator.streamchannel import STREAM_WORKERS
from veza_operator.wiring import SecretValue, public_url, resolve_env, worker_env
from veza_operator.workers import build_children, worker_image

PLATFORM = VezaPlatformSpec.model_validate(platform("ns")["spec"])
ROOM_OWNER = Owner("ChatRoom", "general", "ns", "uid-1")


def by_kind(children: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["kind"]: c for c in children}


def room_children(**spec: Any) -> dict[str, dict[str, Any]]:
    raw = {"platformRef": {"name": "demo"}, **spec}
    return by_kind(build_children(CHAT_WORKERS, ROOM_OWNER, ChatRoomSpec.model_validate(raw), raw, "demo", PLATFORM))


def test_room_gets_deployment_service_and_ingress_route() -> None:
    children = room_children()
    assert set(children) == {"Deployment", "Service", "Ingress"}
    dep = children["Deployment"]
    assert dep["metadata"]["name"] == "chat-general"
    assert dep["metadata"]["ownerReferences"][0] == {
        "apiVersion": "veza.io/v1alpha1", "kind": "ChatRoom", "name": "general", "uid": "uid-1",
        "controller": True, "blockOwnerDeletion": True}
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["chat"]
    env = {e["name"]: e for e in container["env"]}
    assert env["VEZA_RESOURCE_NAME"]["value"] == "general"
    assert env["VEZA_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "veza-connections",
                                                                     "key": "postgres-uri"}
    path = children["Ingress"]["spec"]["rules"][0]["http"]["paths"][0]
    assert path["path"] == "/chat/general" and path["backend"]["service"]["name"] == "chat-general"


def test_pods_meet_pod_security_restricted() -> None:
    pod = room_children()["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"]["type"] == "RuntimeDefault"


def test_pdb_only_with_several_replicas_and_hpa_only_with_autoscaling() -> None:
    assert "PodDisruptionBudget" in room_children(replicas=2)
    auto = room_children(replicas=2, autoscaling={"enabled": True, "minReplicas": 2, "maxReplicas": 6,
                                                  "targetConnectionsPerReplica": 1500})
    hpa = auto["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "veza.io/v1alpha1", "kind": "ChatRoom", "name": "general"}
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "veza_chat_connections"
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)


def test_channel_worker_runs_the_stream_command() -> None:
    raw = {"platformRef": {"name": "demo"}, "source": {"type": "live"}}
    children = by_kind(build_children(STREAM_WORKERS, Owner("StreamChannel", "radio", "ns", "u"),
                                      StreamChannelSpec.model_validate(raw), raw, "demo", PLATFORM))
    assert children["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"] == ["stream"]
    assert children["Ingress"]["spec"]["rules"][0]["http"]["paths"][0]["path"] == "/stream/radio"


def test_platform_children_and_migration_job_per_version() -> None:
    owner = Owner("VezaPlatform", "demo", "ns", "u")
    kinds = [c["kind"] for c in platform_mod.build_children(owner, PLATFORM)]
    # The API's Deployment, Service and Ingress, and the chat pool's Deployment and Service with its PDB (two
    # replicas by default) and no route (each room has its own).
    assert sorted(kinds) == sorted(["ServiceAccount", "ServiceAccount", "Job", "Deployment", "Service",
                                    "Ingress", "Deployment", "Service", "PodDisruptionBudget",
                                    "NetworkPolicy", "NetworkPolicy", "NetworkPolicy", "NetworkPolicy"])
    without_pool = PLATFORM.model_copy(update={"chat": ChatSpec(pool=ChatPool(enabled=False))})
    kinds = [c["kind"] for c in platform_mod.build_children(owner, without_pool)]
    assert sorted(kinds) == sorted(["ServiceAccount", "ServiceAccount", "Job", "Deployment", "Service",
                                    "Ingress", "NetworkPolicy", "NetworkPolicy", "NetworkPolicy", "NetworkPolicy"])
    newer = PLATFORM.model_copy(update={"image": PLATFORM.image.model_copy(update={"tag": "9.9.9"})})
    assert platform_mod.migration_job_name("demo", PLATFORM) != platform_mod.migration_job_name("demo", newer)


def test_env_is_shared_with_local_runs() -> None:
    env = worker_env("demo", "ns", PLATFORM, "chat", "general", {"a": 1})
    assert env["VEZA_DATABASE_URL"] == SecretValue("veza-connections", "postgres-uri")
    local = resolve_env(env, {"veza-connections": {"postgres-uri": "postgresql://x", "AWS_ACCESS_KEY_ID": "k",
                                                   "AWS_SECRET_ACCESS_KEY": "s"}})
    assert local["VEZA_DATABASE_URL"] == "postgresql://x" and local["VEZA_RESOURCE_SPEC"] == '{"a":1}'


def test_subset_comparison_ignores_server_additions_and_normalises_quantities() -> None:
    desired = {"spec": {"replicas": 2, "template": {"resources": {"cpu": "0.5"}}, "ann": {}}, "x": ["a"]}
    observed = {"spec": {"replicas": 2, "template": {"resources": {"cpu": "500m"}, "extra": 1}}, "x": ["a"],
                "status": {}}
    assert is_subset(desired, observed)
    assert not is_subset({"spec": {"replicas": 3}}, observed)
    assert not is_subset({"x": ["a", "b"]}, observed)


def test_api_environment_uses_the_names_the_api_reads() -> None:
    from veza_api.settings import ApiSettings

    spec = PLATFORM.model_copy(update={"auth": PLATFORM.auth.model_copy(update={"accessTokenTTLSeconds": 600})})
    env = resolve_env(worker_env("demo", "ns", spec, "api"), {"veza-connections": {
        "postgres-uri": "postgresql://x", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}})
    settings = ApiSettings.from_env(env)
    assert settings.access_ttl_seconds == 600 and settings.refresh_ttl_seconds == spec.auth.refreshTokenTTLSeconds
    assert settings.database_url == "postgresql://x" and settings.jwt_issuer == "http://veza.test"


def test_traces_are_exported_only_where_the_platform_names_a_collector() -> None:
    """The OpenTelemetry SDK's own variables: veza_core.tracing switches on with the endpoint."""
    assert not any(k.startswith("OTEL_") for k in worker_env("demo", "ns", PLATFORM, "api"))
    traced = platform_spec(observability={"otlpEndpoint": "http://jaeger.monitoring:4318", "traceSamplingRatio": 0.25})
    for component in ("api", "chat", "stream"):
        env = worker_env("demo", "ns", traced, component)
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger.monitoring:4318"
        assert env["OTEL_SERVICE_NAME"] == f"veza-{component}"
        assert (env["OTEL_TRACES_SAMPLER"], env["OTEL_TRACES_SAMPLER_ARG"]) == ("parentbased_traceidratio", "0.25")


def test_chat_workers_never_migrate_the_schema() -> None:
    """Migrations run in the migration Job (or `veza up`'s step) only."""
    assert worker_env("demo", "ns", PLATFORM, "chat", "general", {"platformRef": {"name": "demo"}}
                      )["VEZA_CHAT_MIGRATE"] == "0"
    assert "VEZA_CHAT_MIGRATE" not in worker_env("demo", "ns", PLATFORM, "api")


def test_live_source_password_comes_from_its_secret() -> None:
    raw = {"platformRef": {"name": "demo"},
           "source": {"type": "live", "passwordSecretRef": {"name": "radio-source", "key": "password"}}}
    env = worker_env("demo", "ns", PLATFORM, "stream", "radio", raw)
    assert env["VEZA_SOURCE_PASSWORD"] == SecretValue("radio-source", "password")


def test_scaling_does_not_change_the_pod_template() -> None:
    """kubectl scale and the HPA change spec.replicas: that must not restart every worker."""
    one = room_children(replicas=1)["Deployment"]
    three = room_children(replicas=3, autoscaling={"enabled": True, "minReplicas": 2, "maxReplicas": 6},
                          deletionPolicy="Delete")["Deployment"]
    assert one["spec"]["replicas"] == 1 and three["spec"]["replicas"] == 3
    assert one["spec"]["template"] == three["spec"]["template"]


def test_store_keeps_what_reconciles_read_and_shares_repeated_strings() -> None:
    store = Store(status_read=kinds.STATUS_READ)
    children = room_children()
    for kind in ("Deployment", "Service"):
        observed = json.loads(json.dumps(children[kind]))  # a parsed body, as from a watch
        observed["metadata"] |= {"resourceVersion": "7", "managedFields": [{"manager": "veza-operator"}]}
        observed["status"] = {"readyReplicas": 1} if kind == "Deployment" else {"loadBalancer": {}}
        store.put_child(observed)
    deployment = store.children[("Deployment", "ns", "chat-general")]
    service = store.children[("Service", "ns", "chat-general")]
    assert deployment["status"] == {"readyReplicas": 1} and "status" not in service
    assert "managedFields" not in deployment["metadata"]
    assert is_subset(children["Deployment"], deployment) and is_subset(children["Service"], service)
    # Equal keys and short values of separately parsed bodies are one object, not one copy per body.
    key = next(k for k in deployment["metadata"] if k == "labels")
    assert key is next(k for k in service["metadata"] if k == "labels")
    assert deployment["metadata"]["namespace"] is service["metadata"]["namespace"]


# -- the front door: Ingresses, Gateway API HTTPRoutes, the NetworkPolicy selector ------------

GATEWAY = {"name": "public", "namespace": "gateway-system", "sectionName": "https"}
PARENT = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public", "namespace": "gateway-system",
          "sectionName": "https"}


def platform_spec(**spec: Any) -> VezaPlatformSpec:
    return VezaPlatformSpec.model_validate(platform("ns", **spec)["spec"])


def all_children(platform_spec: VezaPlatformSpec, *, http_routes: bool) -> dict[str, list[dict[str, Any]]]:
    """Every child of a platform, a room and a channel on it, by kind."""
    out: list[dict[str, Any]] = platform_mod.build_children(Owner("VezaPlatform", "demo", "ns", "u"), platform_spec,
                                                            http_routes=http_routes)
    room_raw = {"platformRef": {"name": "demo"}}
    out += build_children(CHAT_WORKERS, ROOM_OWNER, ChatRoomSpec.model_validate(room_raw), room_raw, "demo",
                          platform_spec, http_routes=http_routes)
    chan_raw = {"platformRef": {"name": "demo"}, "source": {"type": "live"}}
    out += build_children(STREAM_WORKERS, Owner("StreamChannel", "radio", "ns", "u"),
                          StreamChannelSpec.model_validate(chan_raw), chan_raw, "demo", platform_spec,
                          http_routes=http_routes)
    kinds: dict[str, list[dict[str, Any]]] = {}
    for child in out:
        kinds.setdefault(child["kind"], []).append(child)
    return kinds


def test_an_http_route_per_platform_room_and_channel_like_their_ingresses() -> None:
    kinds = all_children(platform_spec(gateway=GATEWAY), http_routes=True)
    routes = {r["metadata"]["name"]: r for r in kinds["HTTPRoute"]}
    ingresses = {i["metadata"]["name"]: i for i in kinds["Ingress"]}
    # No catch-all /chat route: each room has its own (led to its pool shard while pooled).
    assert set(routes) == set(ingresses) == {"demo", "chat-general", "stream-radio"}
    for name, (path, service) in {"demo": ("/", "demo-api"), "chat-general": ("/chat/general", "chat-general"),
                                  "stream-radio": ("/stream/radio", "stream-radio")}.items():
        route = routes[name]
        assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
        assert route["spec"] == {
            "parentRefs": [PARENT], "hostnames": ["veza.test"],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": path}}],
                       "backendRefs": [{"kind": "Service", "name": service, "port": 80}]}]}
        ingress = ingresses[name]
        assert ingress["spec"]["rules"][0]["http"]["paths"][0]["path"] == path
        assert route["metadata"]["labels"] == ingress["metadata"]["labels"]
        assert route["metadata"]["ownerReferences"] == ingress["metadata"]["ownerReferences"]
        assert "annotations" not in route["metadata"], "Ingress annotations are for Ingress controllers"


def test_routes_only_with_a_gateway_named_and_the_api_served() -> None:
    assert "HTTPRoute" not in all_children(platform_spec(gateway=GATEWAY), http_routes=False)
    assert "HTTPRoute" not in all_children(platform_spec(), http_routes=True)


def test_gateway_in_the_platform_namespace_and_every_listener_by_default() -> None:
    (route, *_) = all_children(platform_spec(gateway={"name": "public"}), http_routes=True)["HTTPRoute"]
    assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                            "name": "public", "namespace": "ns"}]


def test_gateway_only_platform_has_no_ingress_and_keeps_its_public_url() -> None:
    kinds = all_children(platform_spec(ingress={"host": "veza.test", "enabled": False}, gateway=GATEWAY),
                         http_routes=True)
    assert "Ingress" not in kinds and len(kinds["HTTPRoute"]) == 3  # the platform, a room, a channel
    assert public_url(platform_spec(ingress={"host": "veza.test", "enabled": False}, gateway=GATEWAY)) == \
        "http://veza.test"
    assert public_url(platform_spec(ingress={"host": "veza.test", "enabled": False},
                                    gateway={**GATEWAY, "https": True})) == "https://veza.test"
    assert platform_spec().ingress.enabled, "Ingresses stay on by default"


def route_with(*parents: dict[str, Any], generation: int = 2) -> dict[str, Any]:
    return {"kind": "HTTPRoute", "metadata": {"name": "chat-general", "namespace": "ns", "generation": generation},
            "status": {"parents": list(parents)}}


def parent_status(ref: dict[str, Any], *conditions: tuple[str, str, str, str], generation: int = 2
                  ) -> dict[str, Any]:
    return {"parentRef": ref, "controllerName": "example.com/gateway", "conditions": [
        {"type": t, "status": s, "reason": r, "message": m, "observedGeneration": generation,
         "lastTransitionTime": "2025-01-01T00:00:00Z"} for t, s, r, m in conditions]}


def test_a_route_the_gateway_did_not_accept_degrades_its_owner_with_the_gateways_message() -> None:
    refused = route_with(parent_status(PARENT, ("Accepted", "False", "NotAllowedByListeners", "no listener admits ns"),
                                       ("ResolvedRefs", "True", "ResolvedRefs", "")))
    health = route_health(refused, PARENT)
    assert health is not None and health.degraded and not health.ready
    assert health.reason == "RouteNotAccepted"
    assert "gateway-system/public" in health.message and "NotAllowedByListeners: no listener admits ns" in \
        health.message

    unresolved = route_with(parent_status(PARENT, ("Accepted", "True", "Accepted", ""),
                                          ("ResolvedRefs", "False", "BackendNotFound", "service missing")))
    health = route_health(unresolved, PARENT)
    assert health is not None and health.reason == "RouteRefsNotResolved" and "service missing" in health.message


def test_route_verdicts_of_other_gateways_older_generations_or_none_are_not_problems() -> None:
    accepted = route_with(parent_status(PARENT, ("Accepted", "True", "Accepted", ""),
                                        ("ResolvedRefs", "True", "ResolvedRefs", "")))
    assert route_health(accepted, PARENT) is None
    other = route_with(parent_status({**PARENT, "sectionName": "http"},
                                     ("Accepted", "False", "NotAllowedByListeners", "")))
    assert route_health(other, PARENT) is None, "another listener's verdict"
    stale = route_with(parent_status(PARENT, ("Accepted", "False", "NoMatchingParent", ""), generation=1))
    assert route_health(stale, PARENT) is None, "computed for the previous spec"
    assert route_health(route_with(), PARENT) is None, "no controller has answered yet"
    assert route_health(None, PARENT) is None
    implicit = route_with(parent_status({"name": "public", "namespace": "gateway-system", "sectionName": "https"},
                                        ("Accepted", "False", "NotAllowedByListeners", "")))
    assert route_health(implicit, PARENT) is not None, "group and kind default to Gateway"


def allow_http(spec: VezaPlatformSpec) -> dict[str, Any]:
    policies = platform_mod.network_policies(Owner("VezaPlatform", "demo", "ns", "u"), spec)
    return next(p for p in policies if p["metadata"]["name"] == "demo-allow-http")


def test_front_door_namespace_selector_comes_from_the_spec() -> None:
    (front_door, own_pods) = allow_http(platform_spec())["spec"]["ingress"][0]["from"]
    assert front_door == {"namespaceSelector": {"matchLabels": {"veza.io/front-door": "true"}}}
    assert own_pods == {"podSelector": {"matchLabels": {"veza.io/platform": "demo"}}}

    custom = platform_spec(networkPolicies={"frontDoorNamespaceSelector": {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["traefik", "envoy-gateway-system"]},
        {"key": "example.com/edge", "operator": "Exists"}]}})
    assert allow_http(custom)["spec"]["ingress"][0]["from"][0] == {"namespaceSelector": {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["traefik", "envoy-gateway-system"]},
        {"key": "example.com/edge", "operator": "Exists"}]}}, "setting expressions drops the default label"


def test_prometheus_namespaces_may_scrape_while_metrics_are_on() -> None:
    def scrape_policy(spec: VezaPlatformSpec) -> dict[str, Any] | None:
        policies = platform_mod.network_policies(Owner("VezaPlatform", "demo", "ns", "u"), spec)
        return next((p for p in policies if p["metadata"]["name"] == "demo-allow-metrics"), None)

    found = scrape_policy(platform_spec())
    assert found is not None and found["spec"]["policyTypes"] == ["Ingress"]
    assert found["spec"]["ingress"] == [{
        "from": [{"namespaceSelector": {"matchLabels": {"veza.io/metrics": "true"}}}],
        "ports": [{"protocol": "TCP", "port": 8080}]}]
    custom = scrape_policy(platform_spec(networkPolicies={"metricsNamespaceSelector": {
        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}))
    assert custom is not None and custom["spec"]["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    assert scrape_policy(platform_spec(observability={"metrics": {"enabled": False}})) is None


async def test_delayed_requests_of_one_resource_do_not_pile_up() -> None:
    """A resource waiting for something asks again on every reconcile: one chain, not one per event."""
    runs: list[float] = []

    async def waiting(ctx: Context, key: Key) -> None:
        runs.append(time.monotonic())
        ctx.requeue(key, 0.1)

    # The queue alone is under test: it never calls the API.
    reconciler = Reconciler(Context(client=None, store=Store()), {"ChatRoom": waiting}, workers=2)
    reconciler.start()
    try:
        for _ in range(5):  # events and resyncs while it waits
            reconciler.request(("ChatRoom", "ns", "a"))
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)  # the point: count the runs of one second of waiting
    finally:
        await reconciler.stop()
    # One chain: ~5 direct runs + ~10 delayed ones in the second; five chains would make ~55.
    assert len(runs) < 30, len(runs)
    assert len(runs) > 8, "the delayed requests still run"


async def test_a_paused_reconciler_drops_what_waits_and_ignores_requests() -> None:
    """A standby replica: nothing queued, delayed or retried runs until it resumes."""
    runs: list[Key] = []

    async def record(ctx: Context, key: Key) -> None:
        runs.append(key)

    reconciler = Reconciler(Context(client=None, store=Store()), {"ChatRoom": record}, workers=1)
    reconciler.request(("ChatRoom", "ns", "queued"))
    reconciler.request_later(("ChatRoom", "ns", "delayed"), 0.05)
    reconciler.pause()
    reconciler.request(("ChatRoom", "ns", "while-paused"))
    reconciler.start()
    try:
        await asyncio.sleep(0.2)  # the point: the delayed request was due after 0.05 s, and does not run
        assert runs == []
        reconciler.resume()
        reconciler.request(("ChatRoom", "ns", "after"))
        await wait_for(lambda: runs, timeout=5, message="a request after resuming runs")
    finally:
        await reconciler.stop()
    assert runs == [("ChatRoom", "ns", "after")]


# -- upgrades migrate first ------------------------------------------------------------

OLD, NEW = "ghcr.io/veza-platform/veza:0.1.0", "ghcr.io/veza-platform/veza:0.2.0"
UPGRADED = VezaPlatformSpec.model_validate(platform("ns", image={"tag": "0.2.0"})["spec"])


def job_with(**status: Any) -> dict[str, Any]:
    return {"kind": "Job", "metadata": {"name": "demo-migrate-x"}, "status": status}


def test_workers_run_the_newest_image_whose_migration_succeeded() -> None:
    # First install: nothing migrated yet, the workers start with the spec's image at once.
    first = platform_mod.choose_images(PLATFORM, None, None)
    assert (first.workers.reference, first.recorded, first.migration, first.waiting) == (OLD, None, "Running", False)
    done = platform_mod.choose_images(PLATFORM, {}, job_with(succeeded=1))
    assert (done.workers.reference, done.recorded, done.migration) == (OLD, OLD, "Succeeded")

    # An image change: the new Job runs, the workers stay on the migrated image ...
    waiting = platform_mod.choose_images(UPGRADED, {"workerImage": OLD}, None)
    assert (waiting.target, waiting.workers.reference, waiting.recorded, waiting.waiting) == (NEW, OLD, OLD, True)
    assert platform_mod.choose_images(UPGRADED, {"workerImage": OLD}, job_with(active=1)).workers.reference == OLD
    # ... until it succeeded; a failed Job (backoff limit, or its Failed condition) leaves them there.
    rolled = platform_mod.choose_images(UPGRADED, {"workerImage": OLD}, job_with(succeeded=1))
    assert (rolled.workers.reference, rolled.recorded, rolled.waiting) == (NEW, NEW, False)
    for failed in (job_with(failed=6), job_with(failed=1, conditions=[{"type": "Failed", "status": "True"}])):
        out = platform_mod.choose_images(UPGRADED, {"workerImage": OLD}, failed)
        assert (out.migration, out.workers.reference, out.recorded) == ("Failed", OLD, OLD)
    assert platform_mod.migration_state(job_with(failed=2)) == "Running", "retries left"


def test_the_migration_job_runs_the_new_image_while_the_api_keeps_the_migrated_one() -> None:
    owner = Owner("VezaPlatform", "demo", "ns", "u")
    waiting = platform_mod.choose_images(UPGRADED, {"workerImage": OLD}, None)
    children = {(c["kind"], c["metadata"]["name"]): c
                for c in platform_mod.build_children(owner, UPGRADED, worker_image=waiting.workers)}
    job = children[("Job", platform_mod.migration_job_name("demo", UPGRADED))]["spec"]["template"]["spec"]
    api = children[("Deployment", "demo-api")]["spec"]["template"]["spec"]
    assert job["containers"][0]["image"] == NEW
    assert api["containers"][0]["image"] == OLD
    assert api["containers"][0]["imagePullPolicy"] == UPGRADED.image.pullPolicy


def test_rooms_channels_and_purge_jobs_read_the_worker_image_from_the_platform_status() -> None:
    assert worker_image(UPGRADED, None).reference == NEW, "no status yet: the spec's image (first install)"
    assert worker_image(UPGRADED, {"workerImage": OLD}).reference == OLD
    registry = worker_image(UPGRADED, {"workerImage": "registry.local:5000/veza/veza:0.1.0"})
    assert (registry.repository, registry.tag) == ("registry.local:5000/veza/veza", "0.1.0")

    raw = {"platformRef": {"name": "demo"}}
    for wk, spec, owner in [(CHAT_WORKERS, ChatRoomSpec.model_validate(raw), ROOM_OWNER),
                            (STREAM_WORKERS, StreamChannelSpec.model_validate({**raw, "source": {"type": "live"}}),
                             Owner("StreamChannel", "radio", "ns", "u"))]:
        dep = by_kind(build_children(wk, owner, spec, raw, "demo", UPGRADED,
                                     image=worker_image(UPGRADED, {"workerImage": OLD})))["Deployment"]
        assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == OLD
    room_body = {"kind": "ChatRoom", "metadata": {"name": "general", "namespace": "ns", "uid": "uid-1"}, "spec": raw}
    platform_body = {"kind": "VezaPlatform", "metadata": {"name": "demo", "namespace": "ns", "uid": "u"},
                     "status": {"workerImage": OLD}}
    assert purge_job(room_body, platform_body, UPGRADED)["spec"]["template"]["spec"]["containers"][0]["image"] == OLD


def test_migrating_keeps_ready_and_says_so_in_progressing() -> None:
    conds = {c["type"]: c for c in conditions(
        Health(True, "WorkersReady", "1/1 api replicas ready.", progress=("Migrating", "Waiting.")), 3, None)}
    assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("True", "WorkersReady")
    for kind in ("Progressing", "Reconciling"):
        assert (conds[kind]["status"], conds[kind]["reason"], conds[kind]["message"]) == ("True", "Migrating",
                                                                                          "Waiting.")
    assert conds["Degraded"]["status"] == "False"


def test_a_migrated_image_or_a_deleted_or_recreated_platform_reconciles_its_rooms_and_channels() -> None:
    import kopf

    from veza_operator.handlers import Runtime, _owner_event
    from veza_operator.settings import Settings

    async def run() -> list[list[Key]]:
        runtime = Runtime(client=None, settings=Settings())  # type: ignore[arg-type]
        runtime.paused = False  # active, its store filled (nothing to list here)
        runtime.reconciler.resume()
        memo = kopf.Memo(runtime=runtime)
        for kind, name in [("ChatRoom", "general"), ("StreamChannel", "radio")]:
            runtime.store.put_owner({"kind": kind, "metadata": {"namespace": "ns", "name": name},
                                     "spec": {"platformRef": {"name": "demo"}}})
        asked = []
        for event, uid, status in [("ADDED", "a", {}), ("MODIFIED", "a", {"rooms": 1}),
                                   ("MODIFIED", "a", {"workerImage": OLD}),
                                   ("MODIFIED", "a", {"workerImage": OLD, "rooms": 2}),
                                   ("MODIFIED", "a", {"workerImage": NEW}),
                                   ("DELETED", "a", {"workerImage": NEW}),
                                   ("ADDED", "b", {})]:
            body = {"kind": "VezaPlatform", "metadata": {"namespace": "ns", "name": "demo", "generation": 1,
                                                         "uid": uid}, "status": status}
            await _owner_event("VezaPlatform")(type=event, body=kopf.Body(body), memo=memo)
            asked.append(sorted(runtime.reconciler.pending - {("VezaPlatform", "ns", "demo")}))
            runtime.reconciler.pending.clear()
        return asked

    rooms = [("ChatRoom", "ns", "general"), ("StreamChannel", "ns", "radio")]
    # First sight, then only a change of the worker image (not the echo of other status fields);
    # a deletion and a re-creation (same generation, another uid) concern them too.
    assert asyncio.run(run()) == [rooms, [], rooms, [], rooms, rooms, rooms]
