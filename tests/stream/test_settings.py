"""StreamSettings alone: the environment variables it reads (names unchanged), bounds, and flag overrides."""

from __future__ import annotations

import pytest

from veza_stream.settings import StreamSettings

ENV = {
    "VEZA_RESOURCE_NAME": "radio", "VEZA_STREAM_METAINT": "4000", "VEZA_STREAM_LEADER_TTL": "1.5",
    "VEZA_STREAM_RELAY_MAX_BACKOFF": "2", "VEZA_STREAM_RECORDING_SECONDS": "10", "VEZA_STREAM_LL_HLS_PART": "0.5",
    "VEZA_STREAM_WRITE_INTERVAL": "0.1", "VEZA_SOURCE_PASSWORD": "hackme-please",
    "VEZA_STREAM_ADVERTISE_URL": "http://10.0.0.7:8080", "POD_IP": "10.0.0.7", "AWS_ACCESS_KEY_ID": "key",
    "AWS_SECRET_ACCESS_KEY": "secret",
}


def test_every_variable_is_read() -> None:
    s = StreamSettings.from_env(ENV)
    assert (s.resource_name, s.stream_metaint, s.stream_leader_ttl, s.stream_relay_max_backoff,
            s.stream_recording_seconds, s.stream_ll_hls_part, s.stream_write_interval) == (
        "radio", 4000, 1.5, 2.0, 10.0, 0.5, 0.1)
    assert (s.source_password, s.stream_advertise_url, s.pod_ip, s.aws_access_key_id, s.aws_secret_access_key) == (
        "hackme-please", "http://10.0.0.7:8080", "10.0.0.7", "key", "secret")
    assert "hackme-please" not in repr(s) and "secret" not in repr(s)


def test_defaults_and_empty_values() -> None:
    s = StreamSettings.from_env({"VEZA_SOURCE_PASSWORD": "", "POD_IP": "", "VEZA_POD_IP": "ignored"})
    assert (s.component, s.stream_metaint, s.stream_leader_ttl, s.stream_relay_max_backoff,
            s.stream_recording_seconds, s.stream_ll_hls_part, s.stream_write_interval) == (
        "stream", 16000, 3.0, 30.0, 60.0, 0.0, 0.25)
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
