"""Fixtures for the packaging tests: the chart, the scanners, and the real operator.

The operator fixtures are the operator tests' own (imported, not copied), so the
Argo CD health checks and the Pod Security test see what the real operator writes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.operator.conftest import ns, operator, operator_install  # noqa: F401
from veza_local.controlplane import tool

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "veza"
TERRAFORM = REPO / "terraform"

# checkov pins versions of packages the project also uses (packaging, pytest, networkx) to older
# ones, so it runs from its own tool environment (uv's cache), pinned here, not from the venv.
CHECKOV = "checkov==3.2.459"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """helm without a cluster (lint, template); the kube fixture's .helm() talks to the API server."""
    result = subprocess.run([tool("helm"), *args], capture_output=True, text=True, check=False, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


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


MONITORING_APIS = ("monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PodMonitor",
                   "monitoring.coreos.com/v1/PrometheusRule")
VALUES = Path(__file__).parent / "values"
VALUE_SETS = ["default", *sorted(p.stem for p in VALUES.glob("*.yaml"))]


def values_args(name: str) -> list[str]:
    return [] if name == "default" else ["-f", str(VALUES / f"{name}.yaml")]


@pytest.fixture(scope="session")
def checkov_reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """One checkov run (it takes ~20 s just to start) over the Dockerfile, the chart rendered with every
    values set and every optional API, and terraform/; reports by framework. Inline suppressions travel
    with the copies."""
    scan = tmp_path_factory.mktemp("checkov")
    shutil.copy2(REPO / "Dockerfile", scan / "Dockerfile")
    (scan / "chart").mkdir()
    apis = [a for api in MONITORING_APIS for a in ("--api-versions", api)]
    for values in VALUE_SETS:
        out = helm("template", "veza", str(CHART), "--namespace", "veza-system", *values_args(values), *apis).stdout
        (scan / "chart" / f"{values}.yaml").write_text(out)
    shutil.copytree(TERRAFORM, scan / "terraform")
    reports = checkov("-d", str(scan), "--framework", "dockerfile", "kubernetes", "terraform",
                      "--download-external-modules", "false")
    return {r["check_type"]: r for r in reports}


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
