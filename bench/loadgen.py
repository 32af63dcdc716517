"""Processes shared by the benchmarks: load generator processes (each runs a command, reads one-line commands on
stdin and answers each with one JSON line on stdout; pinned to the cores the server does not use), and the CPU a
process has used."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")


def user_system(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds a process and its threads used so far: a write to a socket is mostly the
    kernel's."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) a process and its threads used so far."""
    return sum(user_system(pid))


def raise_fd_limit() -> None:
    """Soft fd limit up to the hard one (thousands of sockets need it; raise the hard limit with ulimit -Hn)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Generators:
    def __init__(self, commands: list[list[str]], cpus: set[int] | None = None) -> None:
        self.procs = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                       preexec_fn=raise_fd_limit) for command in commands]
        for p in self.procs:
            if cpus:
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(p.pid, cpus)

    def ask(self, *commands: str) -> list[dict[str, Any]]:
        """One command to each process (in order), then each one's answer."""
        for p, command in zip(self.procs, commands, strict=True):
            assert p.stdin is not None
            p.stdin.write(command + "\n")
            p.stdin.flush()
        out = []
        for p in self.procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if not line:
                raise RuntimeError("a load generator died")
            out.append(json.loads(line))
        return out

    def close(self, timeout: float = 15) -> None:
        for p in self.procs:
            with contextlib.suppress(Exception):
                assert p.stdin is not None
                p.stdin.write("quit\n")
                p.stdin.flush()
        for p in self.procs:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
