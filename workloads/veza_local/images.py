"""Container images built on this machine: a Docker engine, the Debian base image and the Veza image.

No image registry is reachable from the machines this project runs on, so nothing is pulled:

- :class:`DockerEngine` uses a Docker daemon that answers, or starts its own ``dockerd`` (as root;
  data-root ``$VEZA_CACHE/docker`` so images survive across runs) and stops only that one;
- :func:`build_base_image` makes the equivalent of ``python:3.11-slim-bookworm`` from Debian packages
  with ``mmdebstrap`` and ``docker import``, tagged by the hash of its recipe (made once per recipe;
  the root filesystem tarball is cached in ``$VEZA_CACHE/images``);
- :func:`build_veza_image` builds the repository's Dockerfile on that base with BuildKit, tagged
  ``veza:<hash of the build context>``; an image with that tag is never built again;
- :func:`save_image` writes a ``docker save`` tarball (for ``ctr images import``), :func:`tag_image`
  adds a name.

``python -m veza_local.images [--save PATH]`` (or ``hack/images.sh``) builds and prints the tag.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

REPO = Path(__file__).resolve().parents[2]
DOCKER_CLIENT = "/usr/bin/docker"  # Debian's docker.io: its `docker build` speaks BuildKit (DOCKER_BUILDKIT=1)


class EngineError(RuntimeError):
    """No container engine can be used, or an image could not be built; the message says why."""


def cache_dir() -> Path:
    """``$VEZA_CACHE``, else ``$XDG_CACHE_HOME/veza``, else ``~/.cache/veza`` (as hack/build-tools.sh)."""
    cache = os.environ.get("VEZA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "veza")
    return Path(cache)


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@contextlib.contextmanager
def _flock(path: Path, mode: int = fcntl.LOCK_EX) -> Iterator[IO[bytes]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        fcntl.flock(f, mode)
        yield f


# -- the engine ---------------------------------------------------------------------------------------------


class DockerEngine:
    """A Docker daemon to build and run images with.

    :meth:`start` uses the daemon the ``docker`` client reaches as configured (``DOCKER_HOST`` or
    the default socket) when it answers; otherwise it starts ``dockerd`` with its socket, pidfile,
    exec-root and log in ``$VEZA_CACHE/dockerd`` and its data-root in ``$VEZA_CACHE/docker``.
    Several processes (the image tests, the end-to-end suite) share that daemon: each holds a shared
    lock while it uses it, and the last one to :meth:`stop` stops it. A daemon it did not start is
    never stopped. Raises :class:`EngineError` with the reason when no engine can be had.
    """

    def __init__(self, cache: Path | None = None, client: str | None = None) -> None:
        self.cache = cache or cache_dir()
        self.run_dir = self.cache / "dockerd"
        self.data_root = self.cache / "docker"
        self.client = client or (DOCKER_CLIENT if os.path.exists(DOCKER_CLIENT) else shutil.which("docker") or "")
        self.host: str | None = None  # the DOCKER_HOST clients use; None: the client's own default
        self.owned = False  # True while this engine uses the daemon started in run_dir
        self.started = False
        self._user_lock: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.run_dir / "docker.sock"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "dockerd.log"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "dockerd.pid"

    def env(self) -> dict[str, str]:
        """The environment for a ``docker`` client of this engine (BuildKit on)."""
        env = {**os.environ, "DOCKER_BUILDKIT": "1"}
        if self.host is not None:
            env["DOCKER_HOST"] = self.host
        return env

    def docker(self, *args: str, check: bool = True, timeout: float | None = 600,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``docker ARGS`` against this engine; raises EngineError with its output when it fails."""
        if not self.client:
            raise EngineError("no docker client: install Debian's docker.io")
        result = subprocess.run([self.client, *args], env=self.env(), capture_output=True, text=True, check=False,
                                timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise EngineError(f"docker {' '.join(args[:3])} failed ({result.returncode}):\n"
                              + _tail(result.stderr or result.stdout))
        return result

    def image_id(self, ref: str) -> str | None:
        """The ID of the local image `ref`, or None when there is none."""
        result = self.docker("image", "inspect", "--format", "{{.Id}}", ref, check=False, timeout=60)
        return result.stdout.strip() if result.returncode == 0 else None

    def _answers(self, host: str | None) -> str | None:
        """None when a daemon answers at `host`, else why not."""
        env = {**os.environ}
        if host is not None:
            env["DOCKER_HOST"] = host
        try:
            result = subprocess.run([self.client, "info", "--format", "{{.ServerVersion}}"], env=env,
                                    capture_output=True, text=True, check=False, timeout=20)
        except subprocess.TimeoutExpired:
            return "`docker info` timed out"
        if result.returncode == 0 and result.stdout.strip():
            return None
        return _tail(result.stderr or result.stdout, 2) or f"`docker info` exited with {result.returncode}"

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> Self:
        if self.started:
            return self
        if not self.client:
            raise EngineError("no docker client: install Debian's docker.io (apt-get install docker.io)")
        if (why := self._answers(None)) is None:
            self.host, self.started = None, True  # the client's own default (DOCKER_HOST or its socket)
            return self
        own = f"unix://{self.socket}"
        with _flock(self.run_dir / "start.lock"):
            if self._answers(own) is not None:
                self._start_dockerd(why)
            self._user_lock = open(self.run_dir / "users.lock", "ab")  # noqa: SIM115 - held until stop()
            fcntl.flock(self._user_lock, fcntl.LOCK_SH)
        self.host, self.owned, self.started = own, True, True
        return self

    def _start_dockerd(self, why: str) -> None:
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        if not os.path.exists(dockerd):
            raise EngineError(f"no Docker daemon answers ({why}) and dockerd is not installed "
                              "(apt-get install docker.io)")
        if os.geteuid() != 0:
            raise EngineError(f"no Docker daemon answers ({why}) and starting dockerd needs root")
        self.data_root.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        cmd = [dockerd, f"--host=unix://{self.socket}", f"--pidfile={self.pidfile}",
               f"--exec-root={self.run_dir / 'exec'}", f"--data-root={self.data_root}"]
        with open(self.log_path, "ab") as log:
            log.write(f"\n==> {' '.join(cmd)}\n".encode())
            log.flush()
            # Its own session: a Ctrl-C in a test run does not reach it; stop() ends it.
            self._process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True)
        deadline = time.monotonic() + 90
        reason = "not started"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EngineError(f"dockerd exited with {self._process.returncode} (no other daemon answers: "
                                  f"{why}); {self.log_path}:\n{self._log_tail()}")
            if (reason := self._answers(f"unix://{self.socket}") or "") == "":
                return
            time.sleep(0.5)
        self._terminate(self._process.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(5)
        raise EngineError(f"dockerd did not answer within 90 s ({reason}); {self.log_path}:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return _tail(self.log_path.read_text(errors="replace"))
        except OSError:
            return ""

    def stop(self) -> None:
        """Release the daemon; stop it when this engine's own dockerd has no other user left."""
        lock, self._user_lock = self._user_lock, None
        self.host, owned, self.owned, self.started = None, self.owned, False, False
        if lock is None or not owned:
            return
        with _flock(self.run_dir / "start.lock"):
            lock.close()  # drops this process's shared lock
            with open(self.run_dir / "users.lock", "ab") as users:
                try:
                    fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return  # another process still uses it; the last one stops it
                if (pid := self._daemon_pid()) is not None:
                    self._terminate(pid)
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(5)
            self._process = None

    def _daemon_pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        # Only the dockerd that uses this run directory (a stale pidfile may name another process).
        return pid if b"dockerd" in cmdline and str(self.pidfile).encode() in cmdline else None

    @staticmethod
    def _terminate(pid: int, timeout: float = 30) -> None:
        def gone() -> bool:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                return True
            return state in ("Z", "X")

        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if gone():
                    return
                time.sleep(0.1)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def tag_image(engine: DockerEngine, src: str, dst: str) -> None:
    """Give the local image `src` the name `dst` too."""
    engine.docker("tag", src, dst, timeout=60)


def save_image(engine: DockerEngine, tag: str, path: Path | None = None) -> Path:
    """A ``docker save`` tarball of `tag` at `path` (default ``$VEZA_CACHE/images/<tag>.tar``), for
    ``ctr images import``. Written once per image: a tarball whose ``<path>.id`` names the image's
    current ID is kept. In the default directory, archives of images that no longer exist go."""
    image_id = engine.image_id(tag)
    if image_id is None:
        raise EngineError(f"no local image {tag}")
    default_dir = cache_dir() / "images"
    path = Path(path) if path is not None else default_dir / (tag.replace("/", "_").replace(":", "_") + ".tar")
    stamp = path.with_name(path.name + ".id")
    if path.exists() and stamp.exists() and stamp.read_text().strip() == image_id:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=path.name + ".", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        engine.docker("save", "--output", partial, tag, timeout=900)
        os.chmod(partial, 0o644)
        os.replace(partial, path)
    finally:
        Path(partial).unlink(missing_ok=True)
    stamp.write_text(image_id + "\n")
    if path.parent == default_dir:
        for old in default_dir.glob("*.tar.id"):
            if old != stamp and engine.image_id(old.read_text().strip()) is None:
                old.with_suffix("").unlink(missing_ok=True)
                old.unlink(missing_ok=True)
    return path


# -- the Debian base image ----------------------------------------------------------------------------------

# The equivalent of python:3.11-slim-bookworm, from Debian's packages. Everything that shapes it is in
# this recipe, and its hash names the image: change anything here and a new image is made.
BASE_REPOSITORY = "veza-base"
DEBIAN_SOURCES = """\
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
BASE_SUITE = "bookworm"
BASE_MMDEBSTRAP_ARGS = (
        "--variant=minbase",
        # /usr merged by symlinks before anything is unpacked: no `usrmerge` (and the full perl it pulls in).
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        # python-is-python3: the official image answers to `python` too.
        "--include=python3.11,python3-pip,python3-venv,ca-certificates,python-is-python3",
        # The mirror may be a snapshot whose Release files have expired.
        '--aptopt=Acquire::Check-Valid-Until "false"',
        # What debian:bookworm-slim leaves out.
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-exclude=/usr/share/info/*",
        # pip may install (the official image has no EXTERNALLY-MANAGED marker); no apt lists, no logs.
        '--customize-hook=rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED',
        '--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/apt/* '
        '"$1"/var/log/dpkg.log "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old',
)
# apt in the image keeps no package caches or translations (debian:bookworm-slim's docker-clean).
_APT_CLEAN = "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"
APT_CONF = (f'DPkg::Post-Invoke {{ "{_APT_CLEAN}"; }};\n'
            f'APT::Update::Post-Invoke {{ "{_APT_CLEAN}"; }};\n'
            'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\nAcquire::Languages "none";\n')
# What the official image sets that `docker import` would otherwise leave out.
BASE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)
BASE_RECIPE = {"suite": BASE_SUITE, "mmdebstrap": BASE_MMDEBSTRAP_ARGS, "sources": DEBIAN_SOURCES,
               "apt.conf": APT_CONF, "changes": BASE_CHANGES}


def base_image_tag() -> str:
    """The base image's name: ``veza-base:py3.11-bookworm-<hash of BASE_RECIPE>``."""
    digest = hashlib.sha256(json.dumps(BASE_RECIPE, sort_keys=True).encode()).hexdigest()[:16]
    return f"{BASE_REPOSITORY}:py3.11-bookworm-{digest}"


def build_base_image(engine: DockerEngine) -> str:
    """The Debian-built base image's tag; made by mmdebstrap and ``docker import`` unless it exists."""
    tag = base_image_tag()
    if engine.image_id(tag) is not None:
        return tag
    images = cache_dir() / "images"
    rootfs = images / f"{tag.replace(':', '-')}.tar"
    with _flock(images / "base.lock"):  # one mmdebstrap at a time, and none for a tarball another one made
        if not rootfs.exists():
            _mmdebstrap(rootfs)
        if engine.image_id(tag) is None:
            engine.docker("import", *(f"--change={c}" for c in BASE_CHANGES),
                          "--message=python3.11 on Debian bookworm (mmdebstrap)", str(rootfs), tag, timeout=900)
    return tag


def _mmdebstrap(out: Path) -> None:
    exe = shutil.which("mmdebstrap")
    if exe is None:
        raise EngineError("mmdebstrap is not installed (apt-get install mmdebstrap)")
    partial = out.with_name(out.name + ".partial")
    log = out.with_name(out.name + ".log")
    with tempfile.TemporaryDirectory(prefix="veza-base-") as tmp:
        sources = Path(tmp) / "debian.sources"
        sources.write_text(DEBIAN_SOURCES)
        apt_conf = Path(tmp) / "docker-clean"
        apt_conf.write_text(APT_CONF)
        cmd = [exe, *BASE_MMDEBSTRAP_ARGS, f"--customize-hook=upload {apt_conf} /etc/apt/apt.conf.d/docker-clean",
               "--format=tar", BASE_SUITE, str(partial), str(sources)]
        with open(log, "wb") as f:
            result = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False, timeout=1800)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise EngineError(f"mmdebstrap failed ({result.returncode}); {log}:\n{_tail(log.read_text(errors='replace'))}")
    partial.replace(out)


# -- the Veza image -----------------------------------------------------------------------------------------


def context_files(root: Path = REPO) -> list[str]:
    """The files of the Docker build context, relative to `root`, sorted: Dockerfile, .dockerignore and
    what .dockerignore's allow-list (``*`` then ``!path`` lines) lets in, minus its exclusions, among
    the files git tracks or would track (untracked files that are not ignored count: they are part of
    the tree being built). Without git, every file under the allowed paths."""
    rules = [line.strip() for line in (root / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    allowed = [r[1:].strip("/") for r in rules if r.startswith("!")]
    excluded = [r.removeprefix("**/") for r in rules if not r.startswith("!") and r != "*"]
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard",
                             "--", *allowed], capture_output=True, check=False) if (root / ".git").exists() else None
    if listed is not None and listed.returncode == 0:
        names = {n for n in listed.stdout.decode().split("\0") if n}
    else:
        names = {str(p.relative_to(root)) for a in allowed for p in ([root / a] if (root / a).is_file()
                                                                     else (root / a).rglob("*"))}
    names |= {"Dockerfile", ".dockerignore"}
    return sorted(n for n in names
                  if (root / n).is_file() and not any(fnmatch.fnmatch(part, pat) for part in Path(n).parts
                                                      for pat in excluded))


def context_hash(root: Path = REPO, base_image: str = "") -> str:
    """A hash of the build context's files (paths, executable bits, contents) and the base image name."""
    h = hashlib.sha256(f"base {base_image}\n".encode())
    for name in context_files(root):
        path = root / name
        h.update(f"{name}\0{os.access(path, os.X_OK):d}\0{path.stat().st_size}\0".encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def ca_bundle() -> Path | None:
    """This machine's CA bundle (it may hold a TLS-intercepting proxy's CA), handed to builds as a secret."""
    for candidate in (os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and os.path.isfile(candidate):
            return Path(candidate)
    return None


def copy_context(dest: Path, root: Path = REPO) -> Path:
    """Copy the build context's files (:func:`context_files`) of `root` to `dest`: a snapshot that builds,
    and hashes, the same as `root` did at the time (without .git, every file in it is context)."""
    for name in context_files(root):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, dest / name)
    return dest


def build_veza_image(engine: DockerEngine, tag: str | None = None, root: Path = REPO) -> str:
    """The Veza image built from the tree `root` on the Debian base: ``veza:<context hash>`` (also named `tag`
    if given, which is then returned). Nothing is built when an image of that hash exists."""
    base = build_base_image(engine)
    with tempfile.TemporaryDirectory(prefix="veza-context-") as tmp:
        # Exactly the hashed files, copied first: what the tag names is what gets built, even while
        # the tree is being edited.
        ctx = copy_context(Path(tmp), root)
        hashed = f"veza:{context_hash(ctx, base)}"
        if engine.image_id(hashed) is None:
            _docker_build(engine, base, hashed, ctx)
            _prune(engine, keep=hashed)
    if tag is not None and tag != hashed:
        tag_image(engine, hashed, tag)
        return tag
    return hashed


KEEP_IMAGES = 3  # builds of other trees kept (another checkout, a test run still using one)


def _prune(engine: DockerEngine, keep: str) -> None:
    """Drop all but the newest KEEP_IMAGES content-hash tags of the Veza image, and bound BuildKit's cache
    (every build of a changed tree adds a ~550 MB layer)."""
    repository = keep.split(":")[0]
    listed = engine.docker("image", "ls", repository, "--format", "{{.Tag}}", timeout=60).stdout.split()  # newest first
    hashed = [t for t in listed if len(t) == 16 and all(c in "0123456789abcdef" for c in t)]
    for old in [t for t in hashed if f"{repository}:{t}" != keep][KEEP_IMAGES - 1:]:
        removed = engine.docker("image", "rm", f"{repository}:{old}", check=False, timeout=120)  # in use: kept
        if removed.returncode == 0:
            (cache_dir() / "images" / f"{repository}-{old}.build.log").unlink(missing_ok=True)
    engine.docker("builder", "prune", "--force", "--keep-storage=4gb", check=False, timeout=600)


def _docker_build(engine: DockerEngine, base: str, tag: str, ctx: Path) -> None:
    version = tomllib.loads((ctx / "pyproject.toml").read_text())["project"]["version"]
    logs = cache_dir() / "images"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{tag.replace(':', '-')}.build.log"
    args = ["build", "--progress=plain", f"--build-arg=BASE_IMAGE={base}", f"--build-arg=VERSION={version}",
            "--tag", tag]
    if (ca := ca_bundle()) is not None:
        args.append(f"--secret=id=ca,src={ca}")
    result = engine.docker(*args, str(ctx), check=False, timeout=3600)
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise EngineError(f"docker build failed ({result.returncode}); {log}:\n{_tail(result.stderr, 40)}")


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m veza_local.images",
                                     description="Build the Veza image here (Debian base, no registry).")
    parser.add_argument("--tag", help="also name the image TAG")
    parser.add_argument("--save", type=Path, metavar="PATH", help="write a `docker save` tarball to PATH")
    parser.add_argument("--keep-engine", action="store_true",
                        help="leave a dockerd started here running (for a following docker command)")
    args = parser.parse_args(argv)
    engine = DockerEngine()
    try:
        engine.start()
        tag = build_veza_image(engine, args.tag)
        if args.save:
            save_image(engine, tag, args.save)
        print(tag)
        if args.keep_engine and engine.host:
            print(f"DOCKER_HOST={engine.host}", file=sys.stderr)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep_engine:
            engine.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
