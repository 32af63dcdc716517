"""`veza api`: the backend API worker."""

from __future__ import annotations

import argparse
import sys

from veza_core.logs import configure_logging
from veza_core.tracing import configure_tracing
from veza_core.web import run as serve

from .app import create_api_app
from .settings import ApiSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="listen address (default: $VEZA_HTTP_HOST or 0.0.0.0)")
    parser.add_argument("--port", type=int, help="listen port (default: $VEZA_HTTP_PORT or 8080)")


def run(args: argparse.Namespace) -> int:
    try:
        settings = ApiSettings.from_env()  # the only read of the environment; passed down from here
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        print(f"veza api: invalid configuration: {exc}", file=sys.stderr)
        return 2
    assert isinstance(settings, ApiSettings)  # from_env builds the class it is called on
    configure_logging("api", settings.log_level)
    configure_tracing("api")
    app = create_api_app(settings)
    serve(app, args.host or settings.http_host, args.port or settings.http_port,
          shutdown_grace=settings.shutdown_grace_seconds, event_loop=settings.event_loop)
    return 0
