"""StreamSettings alone: the environment variables it reads (names unchanged), bounds, and flag overrides."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest

from tests.support.process import VezaProcess, connected_within
from veza_stream.settings import StreamSettings

ENV = {
    "VEZA_RESOURCE_NAME": "radio", "VEZA_STREAM_METAINT": "4000", "VEZA_STREAM_LEADER_TTL": "1.5",
    "VEZA_STREAM_RELAY_MAX_BACKOFF": "2", "VEZA_STREAM_RECORDING_SECONDS": "10", "VEZA_STREAM_LL_HLS_PART": "0.5",
    "VEZA_STREAM_WRITE_INTERVAL": "0.1", "VEZA_SOURCE_PASSWORD": "hackme-please",
    "VEZA_STREAM_ADVERTISE_URL": "http://10.0.0.7:8080", "POD_IP": "10.0.0.7", "AWS_ACCESS_KEY_ID": "key",
    "AWS_SECRET_ACCESS_KEY": "secret", "VEZA_STREAM_LISTEN_BACKLOG": "512",
}


def test_every_variable_is_read() -> None:
    s = StreamSettings.from_env(ENV)
    assert (s.resource_name, s.stream_metaint, s.stream_leader_ttl, s.stream_relay_max_backoff,
            s.stream_recording_seconds, s.stream_ll_hls_part, s.stream_write_interval, s.stream_listen_backlog) == (
        "radio", 4000, 1.5, 2.0, 10.0, 0.5, 0.1, 512)
    assert (s.source_password, s.stream_advertise_url, s.pod_ip, s.aws_access_key_id, s.aws_secret_access_key) == (
        "hackme-please", "http://10.0.0.7:8080", "10.0.0.7", "key", "secret")
    assert "hackme-please" not in repr(s) and "secret" not in repr(s)


def test_defaults_and_empty_values() -> None:
    s = StreamSettings.from_env({"VEZA_SOURCE_PASSWORD": "", "POD_IP": "", "VEZA_POD_IP": "ignored"})
    assert (s.component, s.stream_metaint, s.stream_leader_ttl, s.stream_relay_max_backoff,
            s.stream_recording_seconds, s.stream_ll_hls_part, s.stream_write_interval, s.stream_listen_backlog) == (
        "stream", 16000, 3.0, 30.0, 60.0, 0.0, 0.5, 4096)
    assert s.source_password is None and s.pod_ip is None and s.stream_advertise_url is None


def test_values_are_kept_within_bounds() -> None:
    low = StreamSettings.from_env({"VEZA_STREAM_RELAY_MAX_BACKOFF": "0", "VEZA_STREAM_RECORDING_SECONDS": "0",
                                   "VEZA_STREAM_LL_HLS_PART": "-1", "VEZA_STREAM_WRITE_INTERVAL": "0"})
    assert (low.stream_relay_max_backoff, low.stream_recording_seconds, low.stream_ll_hls_part,
            low.stream_write_interval) == (0.1, 1.0, 0.0, 0.02)
    high = StreamSettings.from_env({"VEZA_STREAM_RECORDING_SECONDS": "99999", "VEZA_STREAM_WRITE_INTERVAL": "5"})
    assert (high.stream_recording_seconds, high.stream_write_interval) == (3600.0, 1.0)


def test_flags_override_the_environment() -> None:
    s = StreamSettings.from_env(ENV).with_overrides(stream_metaint=8000, stream_write_interval=9.0, http_port=None)
    assert s.stream_metaint == 8000 and s.stream_write_interval == 1.0  # validated like the environment's
    assert s.http_port == 8080 and s.stream_leader_ttl == 1.5 and s.aws_secret_access_key == "secret"


def test_a_short_source_password_is_refused() -> None:
    """Guessable at five tries then one a minute: `veza stream` exits 2 with the reason."""
    with pytest.raises(ValueError, match="at least 12 characters"):
        StreamSettings.from_env({"VEZA_SOURCE_PASSWORD": "hackme"})


def test_a_listen_backlog_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="stream_listen_backlog"):
        StreamSettings.from_env({"VEZA_STREAM_LISTEN_BACKLOG": "0"})


@pytest.mark.usefixtures("tracks")
def test_the_worker_listens_with_its_backlog(start_worker: Callable[..., VezaProcess]) -> None:
    """VEZA_STREAM_LISTEN_BACKLOG reaches the listening socket: with the worker stopped (SIGSTOP, so it accepts
    nothing), the kernel queues exactly backlog + 1 handshakes, not aiohttp's default of 128 + 1."""
    from tests.support.stream import PLAYLIST_SPEC

    worker = start_worker("backlog", PLAYLIST_SPEC, VEZA_STREAM_LISTEN_BACKLOG="300")
    assert worker.process is not None
    os.kill(worker.process.pid, signal.SIGSTOP)
    try:
        # 0.5 s: within the first SYN retransmission (1 s), so a dropped SYN does not get in late.
        assert connected_within(worker.port, 400, 0.5) == 301
    finally:
        os.kill(worker.process.pid, signal.SIGCONT)
