"""Helpers of the packaging tests: where the chart and terraform are, helm without a cluster, checkov.

checkov pins versions of packages the project also uses (packaging, pytest, networkx) to older
ones, so it runs from its own tool environment (uv's cache), pinned here, not from the venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from veza_local.controlplane import tool

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "veza"
TERRAFORM = REPO / "terraform"
CHECKOV = "checkov==3.2.459"

MONITORING_APIS = ("monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PodMonitor",
                   "monitoring.coreos.com/v1/PrometheusRule")
VALUES = REPO / "tests" / "packaging" / "values"
VALUE_SETS = ["default", *sorted(p.stem for p in VALUES.glob("*.yaml"))]


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """helm without a cluster (lint, template); the kube fixture's .helm() talks to the API server."""
    result = subprocess.run([tool("helm"), *args], capture_output=True, text=True, check=False, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def values_args(name: str) -> list[str]:
    return [] if name == "default" else ["-f", str(VALUES / f"{name}.yaml")]


def checkov(*args: str) -> list[dict[str, Any]]:
    """Run checkov; returns its JSON reports (one per framework) with passed/failed/skipped checks."""
    uv = shutil.which("uv")
    assert uv, "uv is installed by hack/bootstrap.sh"
    result = subprocess.run([uv, "tool", "run", "--from", CHECKOV, "checkov", "--compact", "--output", "json",
                             "--skip-download", *args], capture_output=True, text=True, check=False, timeout=600,
                            env={**os.environ, "LOG_LEVEL": "WARNING", "BC_SKIP_MAPPING": "TRUE"})
    assert result.returncode in (0, 1), f"checkov failed to run:\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout)
    return report if isinstance(report, list) else [report]


def assert_checkov_clean(report: dict[str, Any]) -> None:
    """No failed check at all, and every suppression carries its reason where it is made.

    checkov without a platform account reports no severities, so "no high-severity finding"
    is enforced as the stricter "no finding".
    """
    results = report.get("results") or {}
    failed = results.get("failed_checks") or []
    assert not failed, "\n".join(f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})"
                                 for c in failed)
    for skipped in results.get("skipped_checks") or []:
        reason = (skipped.get("check_result") or {}).get("suppress_comment") or ""
        assert len(reason) >= 20, f"{skipped['check_id']} on {skipped['resource']} is skipped without a reason"
    assert report["summary"]["passed"] > 0
