"""Stream worker metrics (listener counts drive autoscaling: veza_stream_listeners)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LISTENERS = Gauge("veza_stream_listeners", "Progressive HTTP listeners connected to this replica",
                  ["channel", "rendition"])
LISTENERS_DROPPED = Counter("veza_stream_listeners_dropped_total", "Listeners dropped for reading too slowly",
                            ["channel", "rendition"])
LISTENERS_REJECTED = Counter("veza_stream_listeners_rejected_total", "Listeners refused (limit or auth)",
                             ["channel", "reason"])
ENCODED_SECONDS = Counter("veza_stream_encoded_seconds_total", "Seconds of audio encoded by this replica",
                          ["channel"])
ENCODE_LATENCY = Histogram("veza_stream_encode_seconds", "Wall time to encode one batch for every rendition",
                           ["channel"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25))
LEADER = Gauge("veza_stream_leader", "1 while this replica encodes the channel", ["channel"])
SOURCE_ACTIVE = Gauge("veza_stream_source_active", "1 for the source currently on air", ["channel", "source"])
HLS_SEGMENTS = Counter("veza_stream_hls_segments_total", "HLS segments cut", ["channel", "rendition"])
UPLOADS_IN_PROGRESS = Gauge("veza_stream_uploads_in_progress", "Track uploads being received, probed or transcoded",
                            ["channel"])
INGEST_REJECTED = Counter("veza_stream_ingest_rejected_total", "Live sources or uploads refused",
                          ["channel", "reason"])
RELAY_CONNECTS = Counter("veza_stream_relay_connections_total", "Relay upstream connections, by how they ended",
                         ["channel", "result"])
RECORDING_UPLOADED = Counter("veza_stream_recording_uploads_total", "Recording files and HLS segments archived to S3",
                             ["channel"])
RECORDING_DROPPED = Counter("veza_stream_recording_dropped_total",
                            "Recording files dropped because S3 was too slow or down", ["channel"])
