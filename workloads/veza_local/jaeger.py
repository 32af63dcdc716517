"""Jaeger (v2, in-memory storage) as a local child process: the trace store the tests export spans to over
OTLP/HTTP and read back through its query API (the binary hack/build-tools.sh builds)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from veza_local.controlplane import tool
from veza_local.services import LOOPBACK, LocalService, free_port


class JaegerService(LocalService):
    name = "jaeger"

    def __init__(self, base_dir: Path, port: int | None = None, host: str = LOOPBACK) -> None:
        super().__init__(base_dir, port, host)  # `port`: the query API and UI
        self.otlp_port = free_port(host)
        self.health_port = free_port(host)
        self.config_path = self.dir / "jaeger.yaml"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def otlp_endpoint(self) -> str:
        """What OTEL_EXPORTER_OTLP_ENDPOINT names (the SDK appends /v1/traces)."""
        return f"http://{self.host}:{self.otlp_port}"

    def config(self) -> dict[str, Any]:
        # Only what the tests use, each on its own free port: Jaeger's defaults are fixed ports.
        return {
            "service": {
                "extensions": ["jaeger_storage", "jaeger_query", "healthcheckv2"],
                "pipelines": {"traces": {"receivers": ["otlp"], "processors": ["batch"],
                                         "exporters": ["jaeger_storage_exporter"]}},
                "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
            },
            "extensions": {
                "jaeger_storage": {"backends": {"memstore": {"memory": {"max_traces": 100000}}}},
                "jaeger_query": {"storage": {"traces": "memstore"}, "enable_tracing": False,
                                 "http": {"endpoint": f"{self.host}:{self.port}"},
                                 "grpc": {"endpoint": f"{self.host}:{free_port(self.host)}"}},
                "healthcheckv2": {"use_v2": True, "http": {"endpoint": f"{self.host}:{self.health_port}"}},
            },
            "receivers": {"otlp": {"protocols": {"http": {"endpoint": f"{self.host}:{self.otlp_port}"}}}},
            "processors": {"batch": {"timeout": "200ms"}},
            "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
        }

    def prepare(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))

    def command(self) -> list[str]:
        return [tool("jaeger"), f"--config=file:{self.config_path}"]

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/api/services", timeout=1) as resp:  # noqa: S310 (loopback)
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def api(self, path: str, **params: str) -> Any:
        """The `data` of a GET on the query API (`/api/<path>`)."""
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/{path}?{query}", timeout=10) as resp:  # noqa: S310
            return json.loads(resp.read())["data"]

    def services(self) -> list[str]:
        return list(self.api("services") or [])

    def traces(self, service: str, **params: str) -> list[dict[str, Any]]:
        """Traces with a span of `service`, newest first, in Jaeger's JSON (spans, processes, references)."""
        return list(self.api("traces", service=service, limit=params.pop("limit", "100"), **params) or [])
