"""Worker processes of `veza up`: started like pods, probed, restarted when they crash, stopped cleanly.

Each worker runs in its own process group (so a stop reaches anything it spawned)
with the parent-death signal set, so even a `kill -9` of `veza up` does not leave
workers behind. Output goes to `<data-dir>/logs/<name>.log`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from .services import die_with_parent, stop_process_group


def child_environment(env: Mapping[str, str], base: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment: the wiring's variables over a clean copy of `base`, the environment `veza up`
    was started with (no VEZA_/AWS_ leaking in)."""
    clean = {k: v for k, v in base.items()
             if not k.startswith(("VEZA_", "AWS_", "OTEL_")) and k not in ("KUBECONFIG",)}
    clean["PYTHONUNBUFFERED"] = "1"
    return clean | dict(env)


def veza_command(*args: str) -> list[str]:
    """`veza <args>` with this interpreter: the subcommand's module and `run`, as the container runs them."""
    return [sys.executable, "-m", "veza_local.launch", *args]


class Worker:
    """One worker process (a pod's container): `veza <component>` with its environment."""

    def __init__(self, name: str, args: Sequence[str], env: dict[str, str], port: int, log_dir: Path,
                 host: str = "127.0.0.1", *, base_env: Mapping[str, str]) -> None:
        self.name = name
        self.args = list(args)
        self.env = env
        self.base_env = base_env
        self.host = host
        self.port = port
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.started_at = 0.0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                veza_command(*self.args), env=child_environment(self.env, self.base_env), stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGTERM))  # workers get to shut down gracefully
        self.started_at = time.monotonic()

    def wait(self) -> int | None:
        return None if self.process is None else self.process.wait()

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as resp:  # noqa: S310 - loopback
                return bool(resp.status == 200)
        except OSError:
            return False

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)

    def wait_stopped(self, timeout: float) -> None:
        """After terminate(): wait for the exit, then make sure nothing of its group is left."""
        if self.process is not None:
            stop_process_group(self.process, signal.SIGTERM, timeout)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def stop_all(workers: Sequence[Worker], timeout: float) -> None:
    """SIGTERM to every worker at once, then wait (SIGKILL after `timeout`)."""
    for w in workers:
        w.terminate()
    deadline = time.monotonic() + timeout
    for w in workers:
        w.wait_stopped(max(0.1, deadline - time.monotonic()))
