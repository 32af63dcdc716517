"""`veza stream`: the stream worker for the StreamChannel in VEZA_RESOURCE_NAME / VEZA_RESOURCE_SPEC.

The one place the worker reads its environment (`StreamSettings.from_env`); flags override it.
"""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from veza_core.logs import configure_logging
from veza_core.tracing import configure_tracing
from veza_core.web import run as run_app

from .settings import WRITE_INTERVAL, StreamSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="listen address (default VEZA_HTTP_HOST)")
    parser.add_argument("--port", type=int, help="listen port (default VEZA_HTTP_PORT)")
    parser.add_argument("--metaint", type=int, help="ICY metadata interval in bytes (env VEZA_STREAM_METAINT, 16000)")
    parser.add_argument("--leader-ttl", type=float,
                        help="seconds a leader's Redis lock lives without renewal (env VEZA_STREAM_LEADER_TTL, 3)")
    parser.add_argument("--relay-max-backoff", type=float,
                        help="longest wait between relay reconnections (env VEZA_STREAM_RELAY_MAX_BACKOFF, 30)")
    parser.add_argument("--recording-seconds", type=float,
                        help="seconds of audio per recording file (env VEZA_STREAM_RECORDING_SECONDS, 60)")
    parser.add_argument("--ll-hls-part", type=float,
                        help="LL-HLS part duration in seconds, at most half the segment target, for channels whose "
                             "spec sets no delivery.hls.partDurationSeconds; 0 leaves them on plain HLS "
                             "(env VEZA_STREAM_LL_HLS_PART, 0)")
    parser.add_argument("--write-interval", type=float,
                        help="seconds of audio collected before each write to listeners "
                             f"(env VEZA_STREAM_WRITE_INTERVAL, {WRITE_INTERVAL})")
    parser.add_argument("--listen-backlog", type=int,
                        help="connections queued for the worker to accept (env VEZA_STREAM_LISTEN_BACKLOG, 4096)")


def run(args: argparse.Namespace) -> int:
    try:
        settings = StreamSettings.from_env()
    except (ValueError, ValidationError) as exc:
        print(f"veza stream: invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging("stream", settings.log_level)
    configure_tracing("stream")
    from .app import create_stream_app

    try:
        settings = settings.with_overrides(
            http_host=args.host or None, http_port=args.port or None, stream_metaint=args.metaint,
            stream_leader_ttl=args.leader_ttl, stream_relay_max_backoff=args.relay_max_backoff,
            stream_recording_seconds=args.recording_seconds, stream_ll_hls_part=args.ll_hls_part,
            stream_write_interval=args.write_interval, stream_listen_backlog=args.listen_backlog)
        app = create_stream_app(settings)
    except (ValueError, ValidationError) as exc:
        print(f"veza stream: invalid configuration: {exc}", file=sys.stderr)
        return 2
    run_app(app, settings.http_host, settings.http_port, shutdown_grace=settings.shutdown_grace_seconds,
            backlog=settings.stream_listen_backlog, event_loop=settings.event_loop)
    return 0

