"""The runtime dependency set alone runs the platform.

`hack/up.sh` (`uv sync --no-dev`) and the container image install the project without its dev group, so a
production module that imports a dev-only package (numpy, jsonschema...) works in the test environment and
crashes there. These tests install the runtime set alone into a fresh environment, import every module of
every package the wheel ships from it, and start each worker and the operator from it against real services.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.support.kube import KubeCluster
from tests.support.operator import OperatorProcess, room, wait_condition
from tests.support.up import EXAMPLES
from veza_local import up
from veza_local.controlplane import wait_for
from veza_local.demo_audio import prepare_demo_tracks, upload_demo_tracks
from veza_local.services import NatsService, PostgresService, RedisService, S3Service, free_port
from veza_local.supervisor import child_environment

REPO = Path(__file__).resolve().parents[2]
PACKAGES = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"][
    "packages"]

IMPORT_ALL = """
import importlib, json, pkgutil, sys
imported, failed, files = [], {}, {}
def record(name):
    failed.setdefault(name, "ImportError while walking the package")
for top in sys.argv[1:]:
    try:
        package = importlib.import_module(top)
    except BaseException as exc:
        failed[top] = repr(exc)
        continue
    imported.append(top)
    files[top] = package.__file__
    for info in pkgutil.walk_packages(package.__path__, top + ".", onerror=record):
        try:
            importlib.import_module(info.name)
            imported.append(info.name)
        except BaseException as exc:
            failed[info.name] = repr(exc)
print(json.dumps({"imported": imported, "failed": failed, "files": files}))
"""


def source_modules() -> set[str]:
    """Every module of the packages the wheel ships, from the source tree."""
    names = set()
    for package in PACKAGES:
        root = REPO / package
        for path in root.rglob("*.py"):
            parts = path.relative_to(root.parent).with_suffix("").parts
            names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def runtime_environ(extra: dict[str, str] | None = None, *, runtime: Path) -> dict[str, str]:
    """A process environment that can only see the runtime environment's packages."""
    env = {k: v for k, v in child_environment(extra or {}, os.environ).items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{runtime / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`uv sync --frozen --no-dev --no-editable` into a fresh environment (uv's cache makes it quick)."""
    uv = shutil.which("uv")
    assert uv, "uv is installed by hack/bootstrap.sh"
    target = tmp_path_factory.mktemp("runtime") / "env"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    # --reinstall-package: uv keys its cached build of the project on pyproject.toml only, not on the sources.
    result = subprocess.run([uv, "sync", "--frozen", "--no-dev", "--no-editable", "--reinstall-package", "veza",
                             "--quiet"], cwd=REPO,
                            env={**env, "UV_PROJECT_ENVIRONMENT": str(target)}, capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    return target


def test_every_module_imports_from_the_runtime_set(runtime: Path, tmp_path: Path) -> None:
    python = runtime / "bin" / "python"
    tops = [Path(p).name for p in PACKAGES]
    # -I: no PYTHONPATH, user site or current directory, so only what the environment installed can be imported.
    result = subprocess.run([str(python), "-I", "-c", IMPORT_ALL, *tops], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, check=False, env=runtime_environ(runtime=runtime))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["failed"] == {}, "modules that do not import with the runtime dependencies only:\n" + "\n".join(
        f"  {name}: {error}" for name, error in sorted(report["failed"].items()))
    missing = source_modules() - set(report["imported"])
    assert not missing, f"modules the installed packages lack: {sorted(missing)}"
    for top, path in report["files"].items():  # the installed wheel, not the source tree
        assert Path(path).is_relative_to(runtime), (top, path)
    # It is the runtime set: the dev group is not there.
    absent = subprocess.run([str(python), "-I", "-c", "import importlib.util as u, sys; "
                             "sys.exit(any(u.find_spec(n) for n in ('pytest', 'mypy')))"], check=False)
    assert absent.returncode == 0, "dev packages installed in the runtime environment"


class RuntimeWorker:
    """`veza <component>` from the runtime environment, with the environment `veza up` computes."""

    def __init__(self, runtime: Path, component: str, env: dict[str, str], log_path: Path) -> None:
        self.component = component
        self.port = int(env.get("VEZA_HTTP_PORT", "0"))
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen([str(runtime / "bin" / "veza"), component], cwd=log_path.parent,
                                            env=runtime_environ(env, runtime=runtime), stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def get(self, path: str) -> tuple[int, bytes, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as resp:
                return resp.status, resp.read(), resp.headers.get_content_type()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers.get_content_type()
        except OSError:
            return 0, b"", ""

    def wait(self, path: str, timeout: float = 90.0) -> None:
        status = 0

        def ok() -> bool:
            nonlocal status
            assert self.process.poll() is None, f"veza {self.component} exited:\n{self.log()}"
            status, _, _ = self.get(path)
            return status == 200

        try:
            wait_for(ok, timeout, message=f"veza {self.component} answering {path}")
        except TimeoutError:
            raise AssertionError(f"veza {self.component}: {path} answered {status} for {timeout} s:\n{self.log()}"
                                 ) from None

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


@pytest.fixture
def fresh_database(postgres: PostgresService) -> Iterator[str]:
    name = f"runtime_{uuid.uuid4().hex[:10]}"

    async def execute(sql: str) -> None:
        conn = await asyncpg.connect(postgres.url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(execute(f'CREATE DATABASE "{name}"'))
    yield postgres.url.rsplit("/", 1)[0] + f"/{name}"
    asyncio.run(execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_every_worker_starts_from_the_runtime_set(runtime: Path, tmp_path: Path, fresh_database: str,
                                                  postgres: PostgresService, nats: NatsService, redis: RedisService,
                                                  s3: S3Service) -> None:
    """`veza migrate`, `api`, `chat` and `stream` with the operator's wiring as `veza up` computes it (the example
    files; PostgreSQL, NATS, Redis and S3 are the test services), each until healthy and ready."""
    plan = up.plan([EXAMPLES], None)
    spec, secrets = up.local_platform_spec(plan, up.Services(postgres, nats, s3, redis))
    secrets[up.LOCAL_SECRET]["postgres-uri"] = fresh_database
    keys_dir = tmp_path / "jwt-keys"
    up.ensure_keys(keys_dir)
    client, tracks = prepare_demo_tracks([c.spec for c in plan.channels], endpoint=s3.url,
                                         region=spec.connections.s3.region, access_key=s3.access_key,
                                         secret_key=s3.secret_key)
    upload_demo_tracks(client, tracks, spec.connections.s3.bucket)
    api_port = free_port()
    public_url = f"http://127.0.0.1:{api_port}"

    def env(component: str, resource: Any, port: int) -> dict[str, str]:
        return up.worker_environment(plan, spec, secrets, component, resource, host="127.0.0.1", port=port,
                                     public_url=public_url, keys_dir=keys_dir)

    migrate = RuntimeWorker(runtime, "migrate", env("api", None, 0), tmp_path / "migrate.log")
    assert migrate.process.wait(120) == 0, migrate.log()
    workers = [RuntimeWorker(runtime, "api", env("api", None, api_port), tmp_path / "api.log")]
    workers += [RuntimeWorker(runtime, "chat", env("chat", r, free_port()), tmp_path / f"chat-{r.name}.log")
                for r in plan.rooms]
    workers += [RuntimeWorker(runtime, "stream", env("stream", c, free_port()), tmp_path / f"stream-{c.name}.log")
                for c in plan.channels]
    try:
        for worker in workers:
            worker.wait("/healthz")
        for worker in workers:
            worker.wait("/readyz")
        # The web client's files are in the wheel (the API serves them), and the channel encodes.
        status, body, ctype = workers[0].get("/")
        assert status == 200 and ctype == "text/html" and b"/web/app.js" in body
        stream = workers[-1]
        status, body, _ = stream.get(f"/stream/{plan.channels[0].name}/now-playing")
        assert status == 200 and json.loads(body)["leader"] is True, body
        for worker in workers:
            assert worker.process.poll() is None and "Traceback" not in worker.log(), worker.log()
    finally:
        for worker in workers:
            worker.stop()


@pytest.mark.kube
def test_the_operator_runs_from_the_runtime_set(runtime: Path, kube: KubeCluster, operator_install: Path,
                                                tmp_path: Path) -> None:
    """`veza operator` from the runtime set (the CRDs installed as the chart does): live, and it reconciles; its own
    metrics count the reconcile, whatever other operator the session runs. It watches its own namespace only, so it
    never competes with the suite's shared operator elsewhere; as a namespaced kopf lists namespaces, which the
    chart's RBAC (tested in tests/operator) does not grant, it uses the cluster's admin kubeconfig."""
    ns = kube.create_namespace("runtime")
    operator = OperatorProcess(kube.kubeconfig, tmp_path / "operator.log", peering=None, namespaces=[ns],
                               veza=[str(runtime / "bin" / "veza")],
                               extra_env={"PATH": f"{runtime / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
                                          "PYTHONPATH": "", "VIRTUAL_ENV": str(runtime)})
    try:
        operator.start()
        kube.apply(room(ns, "lobby", platform_name="absent"))
        # Its first report: the platform may yet come (a grace of PLATFORM_GRACE_SECONDS before PlatformNotFound).
        wait_condition(kube, "chatroom", "lobby", ns, status="False", reason="WaitingForPlatform", timeout=30)
        # The condition is written during the reconcile, which is counted once it has returned: not in the same
        # instant.
        try:
            wait_for(lambda: operator.reconciles("ok") >= 1, timeout=10, message="a reconcile counted ok")
        except TimeoutError as exc:
            raise AssertionError(operator.log_tail()) from exc
        assert operator.alive() and "Traceback" not in operator.log_tail(200), operator.log_tail()
    finally:
        operator.stop()
        kube.delete_namespace(ns)
