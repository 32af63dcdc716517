"""`veza stream`: the stream worker for the StreamChannel in VEZA_RESOURCE_NAME / VEZA_RESOURCE_SPEC."""

from __future__ import annotations

import argparse
import os
import sys

from pydantic import ValidationError

from veza_core.config import Settings
from veza_core.logs import configure_logging
from veza_core.web import run as run_app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="listen address (default VEZA_HTTP_HOST)")
    parser.add_argument("--port", type=int, help="listen port (default VEZA_HTTP_PORT)")
    parser.add_argument("--metaint", type=int, default=int(os.environ.get("VEZA_STREAM_METAINT", "16000")),
                        help="ICY metadata interval in bytes (env VEZA_STREAM_METAINT)")
    parser.add_argument("--leader-ttl", type=float, default=float(os.environ.get("VEZA_STREAM_LEADER_TTL", "3")),
                        help="seconds a leader's Redis lock lives without renewal (env VEZA_STREAM_LEADER_TTL)")
    parser.add_argument("--relay-max-backoff", type=float,
                        default=float(os.environ.get("VEZA_STREAM_RELAY_MAX_BACKOFF", "30")),
                        help="longest wait between relay reconnections (env VEZA_STREAM_RELAY_MAX_BACKOFF)")
    parser.add_argument("--recording-seconds", type=float,
                        default=float(os.environ.get("VEZA_STREAM_RECORDING_SECONDS", "60")),
                        help="seconds of audio per recording file (env VEZA_STREAM_RECORDING_SECONDS)")
    parser.add_argument("--ll-hls-part", type=float, default=float(os.environ.get("VEZA_STREAM_LL_HLS_PART", "0")),
                        help="LL-HLS part duration in seconds, at most half the segment target, for channels whose "
                             "spec sets no delivery.hls.partDurationSeconds; 0 leaves them on plain HLS "
                             "(env VEZA_STREAM_LL_HLS_PART)")
    parser.add_argument("--write-interval", type=float,
                        default=float(os.environ.get("VEZA_STREAM_WRITE_INTERVAL", "0.25")),
                        help="seconds of audio collected before each write to listeners "
                             "(env VEZA_STREAM_WRITE_INTERVAL)")


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    configure_logging("stream", settings.log_level)
    from .worker import Worker, create_stream_app

    if args.host:
        settings.http_host = args.host
    if args.port:
        settings.http_port = args.port
    try:
        worker = Worker(settings, source_password=os.environ.get("VEZA_SOURCE_PASSWORD") or None,
                        metaint=args.metaint, leader_ttl=args.leader_ttl,
                        write_interval=min(max(args.write_interval, 0.02), 1.0),
                        relay_max_backoff=max(args.relay_max_backoff, 0.1),
                        recording_seconds=min(max(args.recording_seconds, 1.0), 3600.0),
                        advertise_url=os.environ.get("VEZA_STREAM_ADVERTISE_URL") or None,
                        hls_part_seconds=max(args.ll_hls_part, 0.0))
    except (ValueError, ValidationError) as exc:
        print(f"veza stream: invalid configuration: {exc}", file=sys.stderr)
        return 2
    run_app(create_stream_app(worker), args.host or settings.http_host, args.port or settings.http_port,
            shutdown_grace=settings.shutdown_grace_seconds)
    return 0
