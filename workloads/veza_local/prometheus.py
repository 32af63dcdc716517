"""A Prometheus server as a local child process (the binary hack/build-tools.sh builds), scraping
given targets on loopback; the tests evaluate the dashboard's queries through its HTTP API."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from veza_local.controlplane import tool
from veza_local.services import LOOPBACK, LocalService


@dataclass(frozen=True)
class ScrapeTarget:
    """One `host:port` scraped under `job`, with the target labels a PodMonitor would add
    (namespace, pod, component, platform)."""

    job: str
    address: str
    labels: Mapping[str, str] = field(default_factory=dict)
    metrics_path: str = "/metrics"


class PrometheusService(LocalService):
    name = "prometheus"

    def __init__(self, base_dir: Path, targets: Sequence[ScrapeTarget], *, scrape_interval: str = "1s",
                 port: int | None = None, host: str = LOOPBACK, discovered: Sequence[str] = ()) -> None:
        super().__init__(base_dir, port, host)
        self.targets = list(targets)
        # Jobs whose targets come and go (pods that scale): `discover(job, targets)` rewrites their file.
        self.discovered = list(discovered)
        self.scrape_interval = scrape_interval
        self.config_path = self.dir / "prometheus.yml"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def config(self) -> dict[str, Any]:
        jobs: dict[str, list[dict[str, Any]]] = {}
        paths: dict[str, str] = {}
        for target in self.targets:
            jobs.setdefault(target.job, []).append({"targets": [target.address], "labels": dict(target.labels)})
            paths[target.job] = target.metrics_path
        return {
            "global": {"scrape_interval": self.scrape_interval, "scrape_timeout": self.scrape_interval,
                       "evaluation_interval": self.scrape_interval},
            "scrape_configs": [
                *({"job_name": job, "metrics_path": paths[job], "static_configs": static}
                  for job, static in jobs.items()),
                *({"job_name": job, "file_sd_configs": [{"files": [str(self.targets_file(job))],
                                                          "refresh_interval": "1s"}]}
                  for job in self.discovered),
            ],
        }

    def targets_file(self, job: str) -> Path:
        return self.dir / f"targets-{job}.json"

    def discover(self, job: str, targets: Sequence[ScrapeTarget]) -> None:
        """Replace the targets of a `discovered` job (Prometheus rereads the file within a second); all
        scraped at /metrics."""
        tmp = self.targets_file(job).with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": [t.address], "labels": dict(t.labels)} for t in targets]))
        tmp.rename(self.targets_file(job))

    def prepare(self) -> None:
        for job in self.discovered:
            if not self.targets_file(job).exists():
                self.discover(job, [])
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))

    def command(self) -> list[str]:
        return [tool("prometheus"), f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address={self.host}:{self.port}",
                "--storage.tsdb.retention.time=1h", "--log.level=warn"]

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as resp:  # noqa: S310 (loopback)
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def api(self, path: str, **params: str) -> Any:
        """The `data` of a GET on the HTTP API (`/api/v1/<path>`); raises on an error answer."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as resp:  # noqa: S310
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 400/422: a bad query; the body says why
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise ValueError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector `expr` evaluates to now (a scalar or string comes back as one sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def healthy_targets(self) -> dict[str, str]:
        """Each active target's scrape URL and its health (`up`, `down` or `unknown`)."""
        return {t["scrapeUrl"]: t["health"] for t in self.api("targets", state="active")["activeTargets"]}
