"""Fixtures for the packaging tests: the checkov reports, and the real operator (helpers: tests/support/packaging.py).

The operator fixtures are the operator tests' own (imported, not copied), so the
Argo CD health checks and the Pod Security test see what the real operator writes.
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from tests.operator.conftest import ns, operator, operator_install  # noqa: F401
from tests.support.packaging import CHART, MONITORING_APIS, REPO, TERRAFORM, VALUE_SETS, checkov, helm, values_args


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
