"""The operator's settings: the environment read once, flags on top, names unchanged."""

from __future__ import annotations

import argparse

import pytest
from pydantic import ValidationError

from veza_operator import cli
from veza_operator.settings import Settings


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults() -> None:
    s = cli.settings_from(parse(), {})
    assert (s.peering, s.liveness_port, s.metrics_port, s.bind, s.log_level) == ("veza", 8080, 9090, "0.0.0.0",
                                                                                 "INFO")
    assert (s.watch_server_timeout, s.peering_lifetime, s.reconcile_workers, s.resync_seconds,
            s.capability_ttl, s.event_loop) == (270, 20, 16, 600.0, 60.0, "uvloop")


def test_every_variable_keeps_its_name() -> None:
    env = {"VEZA_PEERING": "p", "VEZA_LIVENESS_PORT": "1", "VEZA_METRICS_PORT": "2", "VEZA_BIND": "127.0.0.1",
           "VEZA_LOG_LEVEL": "DEBUG", "VEZA_WATCH_SERVER_TIMEOUT": "30", "VEZA_PEERING_LIFETIME": "6",
           "VEZA_RECONCILE_WORKERS": "4", "VEZA_RESYNC_SECONDS": "3", "VEZA_CAPABILITY_TTL": "2",
           "VEZA_EVENT_LOOP": "asyncio", "VEZA_UNRELATED": "x", "VEZA_BIND_": ""}
    s = Settings.from_env(env)
    assert s == Settings(peering="p", liveness_port=1, metrics_port=2, bind="127.0.0.1", log_level="DEBUG",
                         watch_server_timeout=30, peering_lifetime=6, reconcile_workers=4, resync_seconds=3,
                         capability_ttl=2, event_loop="asyncio")
    assert Settings.from_env({"VEZA_RESYNC_SECONDS": ""}).resync_seconds == 600, "empty means unset"


def test_flags_win_over_the_environment() -> None:
    env = {"VEZA_PEERING": "from-env", "VEZA_METRICS_PORT": "9999", "VEZA_LIVENESS_PORT": "7777"}
    s = cli.settings_from(parse("--peering", "from-flag", "--metrics-port", "0"), env)
    assert (s.peering, s.metrics_port, s.liveness_port) == ("from-flag", 0, 7777)


def test_bad_values_fail_at_start() -> None:
    with pytest.raises(ValidationError):
        Settings.from_env({"VEZA_RECONCILE_WORKERS": "many"})
    with pytest.raises(ValidationError, match="uvloop"):
        Settings.from_env({"VEZA_EVENT_LOOP": "tokio"})
