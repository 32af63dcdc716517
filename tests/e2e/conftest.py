"""The end-to-end suite: Veza as a platform engineer runs it, on a real node, through the front door.

One session-scoped platform: the image built from the Dockerfile (`veza_local.images`), a
one-node cluster with containerd, kubelet, kube-proxy, kube-router (NetworkPolicies enforced),
CoreDNS and Traefik (`veza_local.cluster`), PostgreSQL, Redis, NATS and S3 as managed services outside the
cluster (host processes behind Services without selectors), `helm install` of the chart
with that image (the operator runs as a pod), then `kubectl apply` of `examples/` into a
namespace that enforces Pod Security `restricted`. Clients reach it only through the
front door (Traefik's NodePort, `Host: veza.example.com`), never through pod IPs.

Skipped, with the reason, where a real node or a container engine cannot run (not root,
no Docker). docs/e2e.md has the whole story.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.e2e import Platform, running_platform
from tests.support.images import engine_or_skip

from veza_local.images import build_veza_image, save_image
from veza_local.node import leftovers, unsupported_reason

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def veza_image_archive() -> Iterator[tuple[str, Path]]:
    """The image from the Dockerfile (cached by content), saved for import into the node."""
    if reason := unsupported_reason():
        pytest.skip(f"no real node here: {reason}")
    # The node needs only the archive: the engine stops after it, giving its CPU and memory back.
    with engine_or_skip() as engine:
        image = build_veza_image(engine)
        archive = save_image(engine, image)
    yield image, archive


@pytest.fixture(scope="session")
def node_tools() -> None:
    """The real node's tools and KEDA, which hack/test.sh builds in the background while the tests before this
    suite run (`VEZA_TOOLS_PENDING`: its log and exit status files); nothing to wait for otherwise."""
    pending = os.environ.get("VEZA_TOOLS_PENDING")
    if not pending:
        return
    exit_file, log = Path(pending + ".exit"), Path(pending + ".log")
    started = time.monotonic()
    while not exit_file.exists():
        if time.monotonic() - started > 3600:
            raise TimeoutError(f"the node's tools are still building after an hour: {log}")
        time.sleep(2)
    if exit_file.read_text().strip() != "0":
        raise RuntimeError(f"hack/build-tools.sh failed for the node's tools:\n{log.read_text()[-4000:]}")
    if (waited := time.monotonic() - started) > 1:
        print(f"waited {waited:.0f} s for the node's tools to build")


@pytest.fixture(scope="session")
def platform(e2e_dir: Path, veza_image_archive: tuple[str, Path], node_tools: None) -> Iterator[Platform]:
    image, archive = veza_image_archive
    with running_platform(e2e_dir, image, archive) as running:
        yield running
    # A stopped node leaves nothing behind (processes, mounts, the bridge): the next run starts clean.
    assert not leftovers(), leftovers()
