"""The operator under test: installed the way the Helm chart installs it, run with its RBAC only.

Fixtures only; the helpers tests import are in tests/support/operator.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kube import KubeCluster
from tests.support.operator import OPERATOR_NAMESPACE, OPERATOR_SA, PEERING, RELEASE, REPO, OperatorProcess


@pytest.fixture(scope="session")
def operator_install(kube: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CRDs, the operator namespace, and the chart's ServiceAccount, RBAC and peering object.

    Returns a kubeconfig holding a token of that ServiceAccount.
    """
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                 *[f"crd/{p.name.removesuffix('.yaml')}" for p in (REPO / "crds").glob("*.yaml")])
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}})
    rendered = kube.helm("template", RELEASE, str(REPO / "charts" / "veza"), "--namespace", OPERATOR_NAMESPACE,
                         "--set", f"serviceAccount.name={OPERATOR_SA}", "--set", f"operator.peering={PEERING}",
                         "--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml",
                         "--show-only", "templates/peering.yaml").stdout
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=rendered)
    return kube.service_account_kubeconfig(OPERATOR_NAMESPACE, OPERATOR_SA,
                                           tmp_path_factory.mktemp("operator") / "kubeconfig")


@pytest.fixture(scope="session")
def operator(operator_install: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(operator_install, tmp_path_factory.mktemp("operator-log") / "operator.log").start()
    yield proc
    proc.stop()


@pytest.fixture
def ns(kube: KubeCluster, operator: OperatorProcess) -> Iterator[str]:
    name = kube.create_namespace("op")
    yield name
    kube.delete_namespace(name)


@pytest.fixture
def operator_stepped_aside(operator: OperatorProcess) -> Iterator[None]:
    """The shared operator steps aside while a test runs its own replicas, then comes back."""
    operator.stop()
    yield
    operator.start()
