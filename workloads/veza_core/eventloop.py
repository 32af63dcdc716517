"""The event loop every Veza process serves on: uvloop's unless `VEZA_EVENT_LOOP=asyncio` (the standard loop, to tell
a loop's bug from ours). The workers and the operator take it from their settings; the test suite's async tests and
the benchmarks' Python baselines from the environment, so each side of a comparison runs on the same loop."""

from __future__ import annotations

import asyncio
import os

import uvloop

KINDS = ("uvloop", "asyncio")


def new_event_loop(kind: str | None = None) -> asyncio.AbstractEventLoop:
    """A loop of `kind` ("uvloop" or "asyncio"; None: `event_loop_kind()`). uvloop's turns and socket writes cost a
    fraction of the standard loop's in Python (docs/api.md#benchmark)."""
    return uvloop.new_event_loop() if event_loop_kind(kind) == "uvloop" else asyncio.new_event_loop()


def event_loop_kind(kind: str | None = None) -> str:
    """`kind`, or else `VEZA_EVENT_LOOP` as the settings read it: "uvloop" unless set. Anything else is refused
    (a misspelt loop must not quietly become the standard one)."""
    chosen = kind or os.environ.get("VEZA_EVENT_LOOP") or "uvloop"
    if chosen not in KINDS:
        raise ValueError(f"unknown event loop {chosen!r}: expected one of {', '.join(KINDS)}")
    return chosen
