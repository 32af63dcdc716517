"""`veza up` as a real subprocess for tests: start on free ports in a temp data dir, wait, SIGINT, audit children.

Used by tests/local, tests/web and the packaging tests (the example files).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from veza_local.controlplane import wait_for
from veza_local.services import free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children, grandchildren...), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Up:
    def __init__(self, data_dir: Path, *args: str, port: int | None = None, env: dict[str, str] | None = None,
                 files: list[Path] | None = None) -> None:
        self.port = port or free_port()
        self.data_dir = data_dir
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / f"up-{self.port}.log"
        cmd = [sys.executable, "-m", "veza_cli.main", "up", "--data-dir", str(data_dir), "--port", str(self.port)]
        for f in files if files is not None else [EXAMPLES]:
            cmd += ["-f", str(f)]
        self.started = time.monotonic()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([*cmd, *args], stdout=log, stderr=subprocess.STDOUT, cwd=data_dir.parent,
                                         env={**os.environ, **(env or {})})
        self.ready_seconds: float | None = None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90.0) -> float:
        def printed() -> bool:
            if "Veza is up:" in self.output():
                return True
            if self.proc.poll() is not None:
                raise AssertionError(f"veza up exited with {self.proc.returncode}:\n{self.output()}")
            return False

        try:
            wait_for(printed, timeout, interval=0.1, message="veza up printing its URL")
        except TimeoutError:
            raise AssertionError(f"veza up not ready within {timeout} s:\n{self.output()}") from None
        self.ready_seconds = time.monotonic() - self.started
        return self.ready_seconds

    def wait_exit(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"veza up still running after {timeout} s:\n{self.output()}") from None

    def worker_ports(self) -> dict[str, int]:
        return {m.group(1): int(m.group(2)) for m in re.finditer(r"\] (\S+)\s+127\.0\.0\.1:(\d+)\s+ready",
                                                                  self.output())}

    def interrupt(self, timeout: float = 30.0) -> tuple[int, set[int]]:
        """SIGINT (Ctrl-C); returns the exit status and the processes that were below it."""
        below = descendants(self.proc.pid)
        self.proc.send_signal(signal.SIGINT)
        status = self.wait_exit(timeout)
        return status, below

    def kill(self) -> None:
        """Last-resort cleanup: SIGKILL `veza up` and whatever is below it."""
        if self.proc.poll() is None:
            below = descendants(self.proc.pid)
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                for pid in below | {self.proc.pid}:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.wait(5)
