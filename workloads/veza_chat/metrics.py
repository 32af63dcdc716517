"""Prometheus metrics of the chat worker (next to the shared ones in veza_core.metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

CONNECTIONS = Gauge("veza_chat_connections", "Open WebSocket connections")
ROOMS = Gauge("veza_chat_rooms", "Rooms this worker serves now (one for a dedicated worker; a pool's open rooms)")
ROOM_MOVES = Counter("veza_chat_rooms_released_total", "Rooms a pool worker stopped serving, by reason", ["reason"])
FRAMES_IN = Counter("veza_chat_frames_in_total", "Client frames received, by type", ["type"])
EVENTS_COMMITTED = Counter("veza_chat_events_committed_total", "Sequenced events committed by this replica")
DELIVERIES = Counter("veza_chat_deliveries_total", "Frames delivered to sockets (events and signals)")
ERRORS = Counter("veza_chat_errors_total", "Error frames and refusals, by stable code", ["code"])
STORE_ERRORS = Counter("veza_chat_store_errors_total", "Group commits that PostgreSQL refused or could not take")
ACK_SECONDS = Histogram("veza_chat_ack_seconds", "Send frame received to ack sent", buckets=_FAST)
FANOUT_SECONDS = Histogram("veza_chat_fanout_seconds", "Commit to delivery on this replica", buckets=_FAST)
COMMIT_SECONDS = Histogram("veza_chat_commit_seconds", "Duration of one group commit", buckets=_FAST)
BATCH_SIZE = Histogram("veza_chat_commit_batch_size", "Events per group commit",
                       buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500))
GAP_FILLS = Counter("veza_chat_gap_fills_total", "Events fetched from PostgreSQL because fan-out missed them")
