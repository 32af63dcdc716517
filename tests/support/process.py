"""`veza <component>` as a child process on a random loopback port: what the stream and monitoring tests
start (chat tests have their own `ChatWorker`, tied to a room)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from veza_local.controlplane import wait_for
from veza_local.services import free_port

VEZA = str(Path(sys.executable).parent / "veza")


class VezaProcess:
    """One `veza <component>` process, its output in `log_path`; `start` waits until `probe` answers."""

    def __init__(self, component: str, env: dict[str, str], log_path: Path, *, probe: str = "/healthz") -> None:
        self.component = component
        self.port = free_port()
        self.env = {**os.environ, **env, "VEZA_HTTP_HOST": "127.0.0.1", "VEZA_HTTP_PORT": str(self.port)}
        self.log_path = log_path
        self.probe = probe
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> VezaProcess:
        with self.log_path.open("ab") as log:
            process = self.process = subprocess.Popen([VEZA, self.component], env=self.env, stdout=log,
                                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                      start_new_session=True)

        def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"veza {self.component} exited: {self.logs()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}{self.probe}", timeout=1):  # noqa: S310 (loopback)
                    return True
            except OSError:
                return False

        try:
            wait_for(answers, timeout, interval=0.1, message=f"veza {self.component} {self.probe}")
        except TimeoutError:
            raise RuntimeError(f"veza {self.component} did not start: {self.logs()[-3000:]}") from None
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def connected_within(port: int, attempts: int, seconds: float) -> int:
    """How many of `attempts` connections to `port` complete their handshake within `seconds`: with nobody
    accepting, the kernel completes one more than the listen backlog and drops the other SYNs (for 1 s)."""
    socks = []
    try:
        for _ in range(attempts):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            socks.append(s)
        done: set[socket.socket] = set()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            _, writable, _ = select.select([], [s for s in socks if s not in done], [], 0.05)
            done.update(s for s in writable if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0)
        return len(done)
    finally:
        for s in socks:
            s.close()
