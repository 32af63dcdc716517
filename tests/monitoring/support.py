"""What the monitoring tests share: the Prometheus binaries (skip when they were not built), the
chart's rules and dashboard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from veza_local.controlplane import tools_bin_dir

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RULES = REPO / "charts" / "veza" / "files" / "prometheus-rules.yaml"
DASHBOARD = REPO / "charts" / "veza" / "files" / "dashboards" / "veza.json"
ALERT_TESTS = HERE / "alerts.test.yaml"


def prometheus_binary(name: str) -> str:
    """The path of `prometheus` or `promtool` built by hack/build-tools.sh; skips the test when absent."""
    path = tools_bin_dir() / name
    if not path.exists():
        pytest.skip(f"{name} is not built in {path.parent}: run hack/build-tools.sh prometheus")
    return str(path)


def alert_rules(path: Path = RULES) -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"] if "alert" in r]


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))
