"""Fixtures shared by the whole suite: real backing services and a real Kubernetes API.

Every service runs as a child process on loopback with a random port and a temp
directory, started only when a test asks for it and stopped at the end of the
session. Tests that stop or crash a service use the ``*_factory`` fixtures to get
a private instance instead of the shared one.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from tests.support.kube import KubeCluster
from veza_core.eventloop import new_event_loop
from veza_local.controlplane import ControlPlane
from veza_local.services import LocalService, NatsService, PostgresService, RedisService, S3Service


def pytest_asyncio_loop_factories(
        config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Async tests and fixtures run on the event loop the workers serve on (veza_core.eventloop.new_event_loop, uvloop
    unless VEZA_EVENT_LOOP says otherwise): what users run is what is tested."""
    return {"workers_loop": new_event_loop}


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> Generator[None, None, None]:
    """Tests run in the order they are written, with the end-to-end suite last: its cluster (a dozen pods) lives
    until the session ends, and would otherwise load the machine under the timing-sensitive tests that follow it.
    pytest would group the tests that take the session loop's factory (the async ones) apart from the others, and
    a module's tests may build on the ones above them (the local platform's read a stream the earlier ones waited
    for; the image upgrade comes after the checks of the first image)."""
    written = sorted(items, key=lambda item: "/tests/e2e/" in str(item.path))
    yield  # the other plugins: pytest's grouping, -k and -m deselection
    kept = set(items)
    items[:] = [item for item in written if item in kept]


def _started(service: LocalService) -> Iterator[LocalService]:
    service.start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def postgres(services_dir: Path) -> Iterator[PostgresService]:
    yield from _started(PostgresService(services_dir / "shared"))  # type: ignore[misc]


@pytest.fixture(scope="session")
def nats(services_dir: Path) -> Iterator[NatsService]:
    yield from _started(NatsService(services_dir / "shared"))  # type: ignore[misc]


@pytest.fixture(scope="session")
def redis(services_dir: Path) -> Iterator[RedisService]:
    yield from _started(RedisService(services_dir / "shared"))  # type: ignore[misc]


@pytest.fixture(scope="session")
def s3(services_dir: Path) -> Iterator[S3Service]:
    yield from _started(S3Service(services_dir / "shared"))  # type: ignore[misc]


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator[Callable[[type[LocalService]], LocalService]]:
    """Private, started instances of a service, for tests that stop, kill or restart it."""
    made: list[LocalService] = []

    def make(kind: type[LocalService]) -> LocalService:
        service = kind(tmp_path / f"{kind.name}-{len(made)}")
        made.append(service)
        return service.start()

    yield make
    for service in made:
        service.stop()


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    """A Kubernetes API: the cluster KUBECONFIG points at, else a local control plane started here."""
    if os.environ.get("KUBECONFIG") and not os.environ.get("VEZA_LOCAL_CONTROL_PLANE"):
        yield KubeCluster(Path(os.environ["KUBECONFIG"]), plane=None)
        return
    plane = ControlPlane(tmp_path_factory.mktemp("kube"))
    with plane:
        yield KubeCluster(plane.kubeconfig, plane=plane)
