"""Series the alerts read exist at 0 from the start: an alert on a missing series reads "no data"."""

from __future__ import annotations

from prometheus_client import generate_latest

from veza_stream.renditions import RenditionFeed


def test_dropped_listeners_start_at_zero_for_every_rendition() -> None:
    RenditionFeed("zero-ch", "mp3-128", "audio/mpeg")
    series = 'veza_stream_listeners_dropped_total{channel="zero-ch",rendition="mp3-128"} 0.0'
    assert series in generate_latest().decode()
