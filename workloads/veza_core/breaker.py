"""A circuit breaker: after repeated failures, stop calling a dependency for a while.

While open, callers use their local fallback straight away instead of waiting
for timeouts; after `reset_after` seconds one trial call is let through
(half-open) and its outcome closes or re-opens the circuit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .metrics import CIRCUIT_OPEN

T = TypeVar("T")
log = logging.getLogger(__name__)


class CircuitBreaker:
    def __init__(self, name: str, *, failure_threshold: int = 3, reset_after: float = 2.0,
                 errors: tuple[type[BaseException], ...] = (OSError,)) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_after = reset_after
        self.errors = errors
        self.failures = 0
        self.opened_at: float | None = None
        CIRCUIT_OPEN.labels(name).set(0)

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None and time.monotonic() - self.opened_at < self.reset_after

    async def call(self, operation: Callable[[], Awaitable[T]], fallback: Callable[[], Awaitable[T]]) -> T:
        if self.is_open:
            return await fallback()
        try:
            result = await operation()
        except self.errors as exc:
            self._failed(exc)
            return await fallback()
        if self.opened_at is not None or self.failures:
            if self.opened_at is not None:
                log.info("circuit closed", extra={"circuit": self.name})
            self.failures, self.opened_at = 0, None
            CIRCUIT_OPEN.labels(self.name).set(0)
        return result

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        if self.failures >= self.failure_threshold or self.opened_at is not None:
            if self.opened_at is None:
                log.warning("circuit opened", extra={"circuit": self.name, "error": repr(exc)})
            self.opened_at = time.monotonic()
            CIRCUIT_OPEN.labels(self.name).set(1)
