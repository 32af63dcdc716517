"""The event loop the workers serve on: uvloop, unless `VEZA_EVENT_LOOP=asyncio` asks for the standard one.

The suite's own async tests run on the same loop (tests/conftest.py), and the worker processes the tests start
(tests/support/chat.py, the image's pods) choose theirs from their settings, as in production.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
import uvloop
from pydantic import ValidationError

from veza_core.config import Settings
from veza_core.eventloop import event_loop_kind, new_event_loop


async def test_the_suite_runs_on_the_loop_the_workers_serve_on() -> None:
    on_uvloop = isinstance(asyncio.get_running_loop(), uvloop.Loop)
    assert on_uvloop == (event_loop_kind() == "uvloop")


@pytest.mark.parametrize(("kind", "uses_uvloop"), [("uvloop", True), ("asyncio", False)])
def test_the_setting_chooses_the_loop(kind: str, uses_uvloop: bool) -> None:
    settings = Settings.from_env({"VEZA_EVENT_LOOP": kind})
    loop = new_event_loop(settings.event_loop)
    try:
        assert isinstance(loop, uvloop.Loop) == uses_uvloop
        assert loop.run_until_complete(asyncio.sleep(0, "served")) == "served"
    finally:
        loop.close()


def test_uvloop_is_the_default_and_an_unknown_loop_is_refused() -> None:
    assert Settings.from_env({}).event_loop == "uvloop"
    with pytest.raises(ValidationError, match="uvloop"):
        Settings.from_env({"VEZA_EVENT_LOOP": "tokio"})
    # A worker told to use a loop it does not know stops at once and says why.
    env = {**os.environ, "VEZA_EVENT_LOOP": "tokio"}
    done = subprocess.run([sys.executable, "-m", "veza_cli.main", "api"], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2 and "invalid configuration" in done.stderr and "event_loop" in done.stderr


def test_an_unknown_loop_is_refused_where_no_settings_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite's loop and the benchmarks' baselines take VEZA_EVENT_LOOP straight from the environment: a
    misspelt loop fails there too, instead of quietly running the standard one."""
    with pytest.raises(ValueError, match="tokio"):
        new_event_loop("tokio")
    monkeypatch.setenv("VEZA_EVENT_LOOP", "tokio")
    with pytest.raises(ValueError, match="uvloop, asyncio"):
        event_loop_kind()
