"""Waiting for something to become true, the one way tests do it.

`wait_for` polls a check (a plain or async function) until it returns a truthy value and
returns that value; on timeout it fails with the message and the last value seen, so a
failing test says what it waited for. Sync tests use `veza_local.controlplane.wait_for`,
the same contract without the event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


@overload
async def wait_for(check: Callable[[], Awaitable[T]], *, timeout: float = ..., interval: float = ...,
                   message: str = ...) -> T: ...
@overload
async def wait_for(check: Callable[[], T], *, timeout: float = ..., interval: float = ...,
                   message: str = ...) -> T: ...
async def wait_for(check: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.05,
                   message: str = "condition") -> Any:
    """Poll `check()` until it returns a truthy value (awaited if a coroutine); return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout} s (last: {value!r})")
        await asyncio.sleep(interval)
