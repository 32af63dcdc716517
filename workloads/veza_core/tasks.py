"""Stopping a background task whose libraries may lose a cancellation.

Python 3.11's `asyncio.wait_for` (used inside redis-py and nats-py) returns its inner result when that result and a
cancellation arrive together, and a timeout library may turn the cancellation into its own TimeoutError. A retry
loop that catches errors would then run on after `cancel()`, and whoever awaits the task would wait forever.
"""

from __future__ import annotations

import asyncio
from typing import Any


def raise_if_cancelled(exc: BaseException) -> None:
    """Called from a retry loop's `except Exception`: an error raised while the task is being cancelled is the
    cancellation, turned into something else by a library."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


async def stop(task: asyncio.Task[Any], *, attempts: int = 3, wait: float = 5.0) -> bool:
    """Cancels `task` (again, up to `attempts` times, if a library lost the cancellation) and waits for it to end.
    False if it still runs: the caller goes on shutting down and says so."""
    for _ in range(attempts):
        task.cancel()
        done, _pending = await asyncio.wait({task}, timeout=wait)
        if done:
            if not task.cancelled():
                task.exception()  # retrieved: an error on the way out is not worth a shutdown's failure
            return True
    return False
