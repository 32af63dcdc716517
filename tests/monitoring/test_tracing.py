"""Traces from real workers in a real trace store: the API exports over OTLP/HTTP to Jaeger (v2, in
memory), and the tests read the traces back through Jaeger's query API."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.monitoring.fleet import json_lines
from tests.support.api import write_keys
from tests.support.chat import ISSUER, Chat
from tests.support.db import fresh_database
from tests.support.kube import KubeCluster
from tests.support.operator import REPO, OperatorProcess, room
from tests.support.process import VezaProcess
from veza_core.auth import TokenIssuer
from veza_core.keys import KeySet, generate_signing_key
from veza_local.controlplane import tools_bin_dir, wait_for
from veza_local.jaeger import JaegerService
from veza_local.services import NatsService, PostgresService, RedisService

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JaegerService]:
    if not (tools_bin_dir() / "jaeger").exists():
        pytest.skip("jaeger is not built: run hack/build-tools.sh jaeger")
    with JaegerService(tmp_path_factory.mktemp("jaeger")) as service:
        yield service


@pytest.fixture(scope="module")
def api_env(postgres: PostgresService, redis: RedisService, tmp_path_factory: pytest.TempPathFactory
            ) -> dict[str, str]:
    import asyncio

    tmp = tmp_path_factory.mktemp("traced-api")
    keys = tmp / "jwt"
    write_keys(keys, [generate_signing_key()])
    database = asyncio.run(fresh_database(postgres, "traces"))
    return {"VEZA_PLATFORM": "traces", "VEZA_DATABASE_URL": database, "VEZA_REDIS_URL": redis.url,
            "VEZA_JWT_ISSUER": "https://veza.test", "VEZA_JWT_KEYS_DIR": str(keys), "VEZA_MAIL_DIR": str(tmp / "mail"),
            "VEZA_PUBLIC_URL": "https://veza.test", "VEZA_ARGON2_MEMORY_KIB": "8192", "VEZA_ARGON2_TIME_COST": "1",
            "VEZA_SHUTDOWN_GRACE_SECONDS": "1"}


def _traced_api(env: dict[str, str], jaeger: JaegerService, log: Path, ratio: str) -> VezaProcess:
    return VezaProcess("api", {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint,
                               # what the operator sets from the platform's spec.observability
                               "OTEL_SERVICE_NAME": "veza-api", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                               "OTEL_TRACES_SAMPLER_ARG": ratio, "OTEL_BSP_SCHEDULE_DELAY": "100"},
                       log).start()


def _login(url: str, headers: dict[str, str] | None = None) -> requests.Response:
    """A login of an address nobody registered: refused, after the database was asked."""
    return requests.post(f"{url}/api/v1/auth/login", json={"email": f"nobody-{uuid.uuid4().hex[:8]}@veza.test",
                                                           "password": PASSWORD}, headers=headers, timeout=10)


def _trace(jaeger: JaegerService, trace_id: str, *, timeout: float = 15.0) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def stored() -> bool:
        response = requests.get(f"{jaeger.url}/api/traces/{trace_id}", timeout=5)
        if response.status_code != 200:
            return False
        found[:] = response.json()["data"]
        return bool(found)

    wait_for(stored, timeout, interval=0.2, message=f"trace {trace_id} in Jaeger")
    return found[0]


def _parent(span: dict[str, Any]) -> str | None:
    return next((r["spanID"] for r in span.get("references", []) if r["refType"] == "CHILD_OF"), None)


def test_a_login_is_one_trace_with_its_database_calls(jaeger: JaegerService, api_env: dict[str, str],
                                                      tmp_path: Path) -> None:
    api = _traced_api(api_env, jaeger, tmp_path / "api.log", "1.0")
    try:
        trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
        response = _login(api.url, {"traceparent": f"00-{trace_id}-{client_span}-01"})
        assert response.status_code == 401, response.text

        def complete() -> bool:  # the server span ends after the database spans: wait for both
            trace = _trace(jaeger, trace_id)
            names = {s["operationName"] for s in trace["spans"]}
            return "POST /api/v1/auth/login" in names and len(trace["spans"]) > 1

        wait_for(complete, 15, interval=0.2, message="the login's spans")
        trace = _trace(jaeger, trace_id)
        spans = {s["spanID"]: s for s in trace["spans"]}
        server = next(s for s in spans.values() if s["operationName"] == "POST /api/v1/auth/login")
        assert _parent(server) == client_span  # the caller's context was taken from `traceparent`
        assert trace["processes"][server["processID"]]["serviceName"] == "veza-api"
        tags = {t["key"]: t["value"] for t in server["tags"]}
        assert tags.get("http.status_code", tags.get("http.response.status_code")) == 401

        def under_server(span: dict[str, Any]) -> bool:
            parent = _parent(span)
            while parent is not None and parent != server["spanID"]:
                parent = _parent(spans[parent]) if parent in spans else None
            return parent == server["spanID"]

        database = [s for s in spans.values()
                    if {"key": "db.system", "type": "string", "value": "postgresql"} in s["tags"]
                    or any(t["key"] == "db.system.name" and t["value"] == "postgresql" for t in s["tags"])]
        assert database, [s["operationName"] for s in spans.values()]
        assert all(under_server(s) for s in database)
        statements = " ".join(str(t["value"]) for s in database for t in s["tags"]
                              if t["key"] in ("db.statement", "db.query.text"))
        assert "users" in statements  # the lookup of the address

        # The request's log line names the trace: from a log search to the trace, and back.
        lines = [e for e in json_lines(api.log_path) if e.get("msg") == "request"
                 and e.get("path") == "/api/v1/auth/login"]
        assert lines and lines[-1]["trace_id"] == trace_id and lines[-1]["span_id"] == server["spanID"]
    finally:
        api.stop()


def test_sampling_is_parent_based(jaeger: JaegerService, api_env: dict[str, str], tmp_path: Path) -> None:
    """At ratio 0 nothing new is recorded, but a request that arrives sampled is."""
    api = _traced_api(api_env, jaeger, tmp_path / "api.log", "0")
    try:
        sampled, unsampled = secrets.token_hex(16), secrets.token_hex(16)
        assert _login(api.url, {"traceparent": f"00-{unsampled}-{secrets.token_hex(8)}-00"}).status_code == 401
        assert _login(api.url).status_code == 401
        assert _login(api.url, {"traceparent": f"00-{sampled}-{secrets.token_hex(8)}-01"}).status_code == 401
        assert _trace(jaeger, sampled)["spans"]
        # Exported in order by one batch processor: once the sampled one is stored, the others would be too.
        assert requests.get(f"{jaeger.url}/api/traces/{unsampled}", timeout=5).status_code == 404
        lines = [e for e in json_lines(api.log_path) if e.get("path") == "/api/v1/auth/login"]
        assert [("trace_id" in e) for e in lines] == [False, False, True]
    finally:
        api.stop()


def test_an_operator_reconcile_is_one_trace_with_its_api_server_calls(jaeger: JaegerService, kube: KubeCluster,
                                                                     tmp_path: Path) -> None:
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    ns = kube.create_namespace("traced")
    operator = OperatorProcess(kube.kubeconfig, tmp_path / "operator.log", peering=None, namespaces=[ns], extra_env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint, "OTEL_SERVICE_NAME": "veza-operator",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.0",
        "OTEL_BSP_SCHEDULE_DELAY": "100"}).start()
    try:
        kube.apply(room(ns, "lobby"), namespace=ns)  # its platform does not exist: reconciled all the same
        found: list[dict[str, Any]] = []

        def reconciled() -> bool:
            for trace in jaeger.traces("veza-operator", operation="reconcile ChatRoom"):
                root = next(s for s in trace["spans"] if s["operationName"] == "reconcile ChatRoom")
                tags = {t["key"]: t["value"] for t in root["tags"]}
                calls = [s for s in trace["spans"] if _parent(s) == root["spanID"]]
                if tags.get("veza.name") == "lobby" and tags.get("k8s.namespace.name") == ns and calls:
                    found[:] = [root, *calls]
                    return True
            return False

        wait_for(reconciled, 30, interval=0.3, message="a traced reconcile of the room")
        calls = found[1:]
        kinds = {t["value"] for s in calls for t in s["tags"] if t["key"] == "span.kind"}
        assert kinds == {"client"}
        # The room's status is written in the same trace as the reconcile that computed it.
        assert any(s["operationName"] == "PATCH chatrooms/status" for s in calls), [s["operationName"] for s in calls]
        for call in calls:
            tags = {t["key"]: t["value"] for t in call["tags"]}
            assert ns in tags["url.path"] and 200 <= tags["http.response.status_code"] < 300
    finally:
        operator.stop()


def test_a_channel_traces_its_transcode_batches(jaeger: JaegerService, tmp_path: Path) -> None:
    """No track to play: the channel is on air with silence, encoded in batches all the same."""
    spec = {"source": {"type": "playlist"}, "renditions": [{"name": "mp3", "codec": "mp3", "bitrateKbps": 64}]}
    stream = VezaProcess("stream", {"VEZA_COMPONENT": "stream", "VEZA_PLATFORM": "traces",
                                    "VEZA_RESOURCE_NAME": "radio", "VEZA_RESOURCE_SPEC": json.dumps(spec),
                                    "VEZA_SHUTDOWN_GRACE_SECONDS": "1",
                                    "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint,
                                    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.0",
                                    "OTEL_BSP_SCHEDULE_DELAY": "100"}, tmp_path / "stream.log").start()
    try:
        batches: list[dict[str, Any]] = []

        def traced() -> bool:
            batches[:] = [s for t in jaeger.traces("veza-stream", operation="transcode batch", limit="20")
                          for s in t["spans"]]
            return len(batches) >= 3

        wait_for(traced, 20, interval=0.3, message="transcode batch spans")
        for span in batches:
            tags = {t["key"]: t["value"] for t in span["tags"]}
            assert tags["veza.channel"] == "radio" and tags["veza.source"] == "silence"
            assert tags["veza.bytes.mp3"] > 0 and 0 < tags["veza.encode_seconds"] < 1
            assert not span.get("references")  # the channel's own clock: nothing caused a batch
            assert 0 < tags["veza.audio_seconds"] <= 0.2  # at most ~0.1 s of audio (less when ahead of the clock)
            assert span["duration"] >= tags["veza.encode_seconds"] * 1e6 * 0.99  # µs: the encoding is inside it
    finally:
        stream.stop()


async def test_a_chat_send_on_one_replica_and_its_delivery_on_the_other_are_one_trace(
        jaeger: JaegerService, postgres: PostgresService, nats: NatsService, redis: RedisService,
        tmp_path: Path) -> None:
    key = generate_signing_key()
    write_keys(tmp_path / "jwt", [key])
    chat = Chat(tmp_path, tmp_path / "jwt", TokenIssuer(KeySet.from_private_keys([key]), issuer=ISSUER),
                {"VEZA_DATABASE_URL": postgres.url, "VEZA_NATS_URL": nats.url, "VEZA_REDIS_URL": redis.url})
    traced = {"OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
              "OTEL_TRACES_SAMPLER_ARG": "1.0", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    try:
        a, b = await chat.worker(None, **traced), await chat.worker(None, **traced)
        alice, bob = await chat.connect(a, "alice"), await chat.connect(b, "bob")
        await alice.send({"type": "send", "cid": "traced-1", "text": "hello"})
        await alice.expect("ack", cid="traced-1")
        await bob.expect("event", seq=1)
        found: dict[str, Any] = {}

        def traced_through() -> bool:
            for candidate in jaeger.traces("veza-chat", operation="chat send"):
                names = [s["operationName"] for s in candidate["spans"]]
                if names.count("chat deliver") == 2 and "chat commit" in names:
                    found.update(candidate)
                    return True
            return False

        wait_for(traced_through, 20, interval=0.3, message="the send's trace with both deliveries")
        spans = {s["operationName"]: s for s in found["spans"] if s["operationName"] != "chat deliver"}
        send, commit = spans["chat send"], spans["chat commit"]
        assert _parent(send) is None  # its own trace, linked to the WebSocket session's (another trace)
        assert [r["refType"] for r in send.get("references", [])] == ["FOLLOWS_FROM"]
        assert _parent(commit) == send["spanID"]
        deliveries = [s for s in found["spans"] if s["operationName"] == "chat deliver"]
        assert all(_parent(d) == commit["spanID"] for d in deliveries)

        def pid(span: dict[str, Any]) -> int:
            return next(t["value"] for t in found["processes"][span["processID"]]["tags"] if t["key"] == "process.pid")

        # One delivery on the sender's replica, one on the other: the context crossed NATS in the headers.
        assert a.proc is not None and b.proc is not None
        assert pid(send) == pid(commit) == a.proc.pid
        assert sorted(pid(d) for d in deliveries) == sorted([a.proc.pid, b.proc.pid])
        assert any(t["key"] == "db.system" or t["key"] == "db.system.name" for s in found["spans"]
                   for t in s["tags"] if _parent(s) == commit["spanID"])  # the commit's INSERT, below it
    finally:
        await chat.close()


@pytest.mark.parametrize(("ratio", "low", "high"), [("0", 0, 0), ("0.25", 400, 600), ("1.0", 2000, 2000)])
def test_chat_operations_are_sampled_at_the_ratio_before_any_span_exists(jaeger: JaegerService, ratio: str, low: int,
                                                                         high: int) -> None:
    """new_trace draws the ratio itself: a left-out operation gets no span (not an unsampled one), a drawn one
    is recorded whatever the ratio sampler would say of its trace id."""
    code = ("from opentelemetry import trace; from veza_core import tracing; tracing.configure_tracing('chat'); "
            "t = trace.get_tracer('t'); n = 0\n"
            "for _ in range(2000):\n"
            "    with tracing.new_trace(t, 'chat send') as span:\n"
            "        n += span is not None and span.is_recording()\n"
            "print(n)")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")}
    env.update(OTEL_EXPORTER_OTLP_ENDPOINT=jaeger.otlp_endpoint, OTEL_TRACES_SAMPLER="parentbased_traceidratio",
               OTEL_TRACES_SAMPLER_ARG=ratio, OTEL_BSP_SCHEDULE_DELAY="60000")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert low <= int(out.strip().splitlines()[-1]) <= high


def test_without_an_endpoint_nothing_is_loaded() -> None:
    """No endpoint: no SDK, exporter or instrumentation in the process, so tracing off costs nothing."""
    code = ("import sys; from veza_core.tracing import configure_tracing; on = configure_tracing('api'); "
            "print(json.dumps([on, sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', "
            "'opentelemetry.instrumentation', 'opentelemetry.exporter')))]))")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", "import json; " + code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out) == [False, []]
