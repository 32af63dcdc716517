"""The container engine for tests that build or run the image: started if needed, else a skip with the reason."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from veza_local.images import DockerEngine, EngineError


@contextlib.contextmanager
def engine_or_skip() -> Iterator[DockerEngine]:
    engine = DockerEngine()
    try:
        engine.start()
    except EngineError as exc:
        pytest.skip(f"no container engine can start here: {exc}")
    try:
        yield engine
    finally:
        engine.stop()
