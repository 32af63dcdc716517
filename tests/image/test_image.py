"""The container image, built here from the Dockerfile on a Debian-built base, and run.

The module's fixture starts a Docker engine (or uses one that answers), builds the base image and
the Veza image, or reuses them when their content-hash tags exist. It skips, with the reason, only
when no container engine can start; a failing build fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.images import engine_or_skip
from veza_cli.main import COMMANDS
from veza_local.images import (
    REPO,
    DockerEngine,
    build_base_image,
    build_veza_image,
    context_files,
    context_hash,
    copy_context,
    save_image,
)

pytestmark = [pytest.mark.timeout(1800)]  # a cold build: mmdebstrap, then uv sync from PyPI

# Measured: base 145 MB, Veza image 691 MB (docker's Size; docs/deploy.md). Budgets with ~10% headroom.
BASE_BUDGET_MB = 160
IMAGE_BUDGET_MB = 760
UID = 10001
# How the operator runs the workers: non-root, read-only root, /tmp an emptyDir, no capabilities.
HARDENED = ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--network", "none"]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
PACKAGES = [Path(p).name for p in PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]]


@pytest.fixture(scope="module")
def engine() -> Iterator[DockerEngine]:
    with engine_or_skip() as engine:
        yield engine


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The build context as it is now: every test sees the same build while the working tree is edited."""
    return copy_context(tmp_path_factory.mktemp("tree"), REPO)


@pytest.fixture(scope="module")
def image(engine: DockerEngine, tree: Path) -> str:
    return build_veza_image(engine, root=tree)


def run(engine: DockerEngine, image: str, *args: str, entrypoint: str | None = None) -> str:
    """`docker run` hardened as the operator's pods; returns stdout, fails with the container's output."""
    extra = ["--entrypoint", entrypoint] if entrypoint else []
    result = engine.docker("run", "--rm", *HARDENED, *extra, image, *args, check=False, timeout=300)
    assert result.returncode == 0, f"{args} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def size_mb(engine: DockerEngine, ref: str) -> float:
    return int(engine.docker("image", "inspect", "--format", "{{.Size}}", ref).stdout) / 1e6


# -- without an engine: what the tag names ----------------------------------------------------------------


def test_veza_version_on_the_host() -> None:
    out = subprocess.run([str(Path(sys.executable).parent / "veza"), "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == f"veza {VERSION}"


def test_the_context_hash_covers_exactly_the_build_context(tmp_path: Path) -> None:
    """Edits to anything the build copies change the tag; tests, caches and git-ignored files do not."""
    root = tmp_path / "tree"
    (root / "workloads" / "veza_x").mkdir(parents=True)
    (root / "tests").mkdir()
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "uv.lock", "README.md"):
        (root / name).write_bytes((REPO / name).read_bytes())
    (root / "workloads" / "veza_x" / "__init__.py").write_text("A = 1\n")
    (root / "tests" / "test_x.py").write_text("")
    (root / ".gitignore").write_text("*.log\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "."], check=True)

    first = context_hash(root, "base:1")
    assert first == context_hash(root, "base:1"), "deterministic"
    assert context_hash(root, "base:2") != first, "the base image is part of it"
    (root / "tests" / "test_x.py").write_text("changed = True\n")
    (root / "workloads" / "veza_x" / "__pycache__").mkdir()
    (root / "workloads" / "veza_x" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\0")
    (root / "workloads" / "veza_x" / "debug.log").write_text("ignored by git")
    assert context_hash(root, "base:1") == first, "outside the context, a cache, or git-ignored"

    for change in (lambda: (root / "workloads" / "veza_x" / "__init__.py").write_text("A = 2\n"),
                   lambda: (root / "workloads" / "veza_x" / "new.py").write_text(""),  # untracked, not ignored
                   lambda: (root / "workloads" / "veza_x" / "new.py").chmod(0o755),
                   lambda: (root / "uv.lock").write_text("changed"),
                   lambda: (root / "Dockerfile").write_text("FROM scratch\n")):
        before = context_hash(root, "base:1")
        change()
        assert context_hash(root, "base:1") != before
    assert context_hash(copy_context(tmp_path / "snapshot", root), "base:1") == context_hash(root, "base:1")

    files = context_files(REPO)
    assert {"Dockerfile", ".dockerignore", "pyproject.toml", "uv.lock", "README.md",
            "workloads/veza_cli/main.py", "operator/veza_operator/__init__.py"} <= set(files)
    assert not [f for f in files if f.startswith(("tests/", "docs/", ".venv/")) or "__pycache__" in f]


# -- with an engine ---------------------------------------------------------------------------------------


def test_image_sizes_are_within_budget(engine: DockerEngine, image: str) -> None:
    base = build_base_image(engine)
    assert size_mb(engine, base) <= BASE_BUDGET_MB, f"the base image grew: {size_mb(engine, base):.0f} MB"
    assert size_mb(engine, image) <= IMAGE_BUDGET_MB, f"the image grew: {size_mb(engine, image):.0f} MB"


def test_runs_as_10001_on_a_read_only_root_and_reports_its_version(engine: DockerEngine, image: str) -> None:
    config = json.loads(engine.docker("image", "inspect", "--format", "{{json .Config}}", image).stdout)
    assert config["User"] == f"{UID}:{UID}" and config["Entrypoint"] == ["veza"]
    assert run(engine, image, "--version").strip() == f"veza {VERSION}"
    ids = run(engine, image, "-c", "import os; print(os.getuid(), os.getgid(), os.getgroups())", entrypoint="python")
    assert ids.split()[:2] == [str(UID), str(UID)]
    # Nothing can be written outside /tmp, and the CA handed to the build is not in the image.
    probe = ("import os, pathlib\n"
             "for d in ('/', '/opt/veza', '/opt/veza/lib/python3.11/site-packages/veza_core'):\n"
             "    assert not os.access(d, os.W_OK), d\n"
             "pathlib.Path('/tmp/ok').write_text('ok')\n"
             "assert not os.path.exists('/run/secrets/ca')\n"
             "print('ok')")
    assert run(engine, image, "-c", probe, entrypoint="python").strip() == "ok"


# Inside the image: import every module of every Veza package (a dev-only import or a missing system
# library fails here), then load the codec libraries with ctypes and encode a frame with each.
IMPORT_ALL = """
import importlib, json, pkgutil, sys, traceback
failed, modules = {}, []
for name in sys.argv[1:]:
    pkg = importlib.import_module(name)
    modules.append(name)
    for info in pkgutil.walk_packages(pkg.__path__, name + ".", onerror=lambda n: failed.setdefault(n, "walk")):
        try:
            importlib.import_module(info.name)
            modules.append(info.name)
        except BaseException:
            failed[info.name] = traceback.format_exc(limit=3)
import ctypes
from veza_stream import lame, opus
mp3, ogg = lame.LameEncoder(48000, 2, 128), opus.OpusEncoder(48000, 2, 96)
silence = (ctypes.c_float * (2 * 1152))()
mp3_bytes = len(mp3.encode(ctypes.addressof(silence), ctypes.addressof(silence), 1152) + mp3.flush())
packet = len(ogg.encode(ctypes.addressof(silence), 960))
maps = open("/proc/self/maps").read()
libs = sorted({line.split()[-1] for line in maps.splitlines() if "libmp3lame" in line or "libopus" in line})
print(json.dumps({"failed": failed, "modules": modules, "mp3_bytes": mp3_bytes, "opus_packet": packet,
                  "libs": libs}))
"""


def test_every_module_imports_and_the_codec_libraries_load(engine: DockerEngine, image: str) -> None:
    report = json.loads(run(engine, image, "-c", IMPORT_ALL, *PACKAGES, entrypoint="python").splitlines()[-1])
    assert not report["failed"], "\n".join(f"{name}:\n{tb}" for name, tb in report["failed"].items())
    for package in PACKAGES:
        assert package in report["modules"]
    assert len(report["modules"]) > 50
    assert "veza_stream.lame" in report["modules"] and "veza_stream.opus" in report["modules"]
    assert report["mp3_bytes"] > 0 and report["opus_packet"] > 0
    # Debian's libraries (from the runtime stage's apt-get), not copies bundled in a wheel.
    lib_dir = "/usr/lib/x86_64-linux-gnu" if os.uname().machine == "x86_64" else "/usr/lib/"
    assert [lib for lib in report["libs"] if lib.startswith(lib_dir) and "libmp3lame.so.0" in lib], report["libs"]
    assert [lib for lib in report["libs"] if lib.startswith(lib_dir) and "libopus.so.0" in lib], report["libs"]


def test_every_subcommand_answers_help(engine: DockerEngine, image: str) -> None:
    script = "; ".join(f"veza {name} --help > /tmp/{name}.txt || exit 1" for name in COMMANDS) + \
        "; head -qn1 " + " ".join(f"/tmp/{name}.txt" for name in COMMANDS)
    usage = run(engine, image, "-c", script, entrypoint="sh").splitlines()
    assert [line.split()[1:3] for line in usage] == [["veza", name] for name in COMMANDS]


def test_a_second_build_of_the_same_tree_is_a_no_op(engine: DockerEngine, image: str, tree: Path) -> None:
    image_id = engine.image_id(image)
    started = time.monotonic()
    again = build_veza_image(engine, root=tree)
    elapsed = time.monotonic() - started
    assert again == image and engine.image_id(again) == image_id
    assert elapsed < 5, f"a warm build took {elapsed:.1f} s"


def test_saved_archive_is_written_once_per_image(engine: DockerEngine, image: str) -> None:
    """What the end-to-end suite imports into containerd (`ctr images import`), from the same cache."""
    archive = save_image(engine, image)
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert manifest[0]["RepoTags"] == [image]
    assert manifest[0]["Config"].removesuffix(".json") in (engine.image_id(image) or "")
    written = archive.stat().st_mtime_ns
    assert save_image(engine, image) == archive and archive.stat().st_mtime_ns == written


def test_a_second_user_does_not_stop_the_shared_daemon(engine: DockerEngine) -> None:
    other = DockerEngine().start()
    assert other.host == engine.host
    other.stop()
    assert engine.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
