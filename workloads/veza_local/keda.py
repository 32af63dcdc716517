"""KEDA in the local cluster, installed as a cluster operator installs it: its release manifest (CRDs, RBAC, the
operator, the metrics server behind the external.metrics.k8s.io APIService; no admission webhooks), here with
images holding the binaries hack/build-tools.sh builds from KEDA's Go module.

The API server reaches the metrics server through the aggregation layer (veza_local.controlplane turns it on);
KEDA's operator makes the certificates they share (the Secret kedaorg-certs) and fills the APIService's CA.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from .cluster import Cluster, scratch_image
from .controlplane import tool
from .node import NodeError

NAMESPACE = "keda"


def images() -> dict[str, Path]:
    """KEDA's operator and metrics server images, by reference (one static binary each, at /keda and
    /keda-adapter as the release manifest's commands expect)."""
    version = Path(tool("keda")).resolve().name.removeprefix("keda-v")
    return {f"veza.local/keda:{version}": scratch_image(f"veza.local/keda:{version}", "keda"),
            f"veza.local/keda-adapter:{version}": scratch_image(f"veza.local/keda-adapter:{version}", "keda-adapter")}


def manifest(operator_image: str, adapter_image: str) -> str:
    """The release manifest with our images, used as imported (never pulled)."""
    text = Path(tool("keda-install.yaml")).read_text()
    text = re.sub(r"image: ghcr\.io/kedacore/keda-metrics-apiserver:\S+", f"image: {adapter_image}", text)
    text = re.sub(r"image: ghcr\.io/kedacore/keda:\S+", f"image: {operator_image}", text)
    return text.replace("imagePullPolicy: Always", "imagePullPolicy: IfNotPresent")


def install(cluster: Cluster, timeout: float = 240.0) -> None:
    """Import the images, apply the manifest, and wait until the external metrics API is served."""
    refs = images()
    for archive in refs.values():
        cluster.import_image(archive)
    operator_image, adapter_image = refs
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=veza-local", "-f", "-",
                    input=manifest(operator_image, adapter_image))
    for deployment in ("keda-operator", "keda-metrics-apiserver"):
        cluster.kubectl("-n", NAMESPACE, "rollout", "status", f"deployment/{deployment}", f"--timeout={timeout:.0f}s")
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = cluster.kubectl("get", "apiservice", "v1beta1.external.metrics.k8s.io", "-o",
                                 "jsonpath={.status.conditions[?(@.type=='Available')].status}", check=False)
        if status.strip() == "True":
            return
        time.sleep(1)
    raise NodeError(f"KEDA's external metrics API not Available within {timeout:.0f} s (Available={status!r})")


__all__ = ["NAMESPACE", "images", "install", "manifest"]
