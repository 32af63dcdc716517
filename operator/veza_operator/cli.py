"""`veza operator`: run the kopf operator.

The environment is read once, here (`Settings.from_env`); flags given on the command line win.
"""

from __future__ import annotations

import argparse
import logging
import sys

from veza_core.eventloop import new_event_loop
from veza_core.logs import configure_logging
from veza_core.tracing import configure_tracing

from .settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Defaults are None: unset flags leave the environment's value (or the built-in default) in place.
    parser.add_argument("-n", "--namespace", action="append", default=[],
                        help="watch only this namespace (repeatable); default: all namespaces")
    parser.add_argument("--peering", default=None,
                        help="peering name: replicas with the same name keep one active "
                             "(default: $VEZA_PEERING or veza)")
    parser.add_argument("--standalone", action="store_true", help="no peering (a single replica)")
    parser.add_argument("--liveness-port", type=int, default=None,
                        help="serve /healthz on this port (0: off; default: $VEZA_LIVENESS_PORT or 8080)")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics on this port (0: off; default: $VEZA_METRICS_PORT or 9090)")
    parser.add_argument("--bind", default=None,
                        help="address for the liveness and metrics ports (default: $VEZA_BIND or 0.0.0.0)")
    parser.add_argument("--log-level", default=None, help="default: $VEZA_LOG_LEVEL or INFO")


def settings_from(args: argparse.Namespace, env: dict[str, str] | None = None) -> Settings:
    """The environment's settings with the flags given on the command line applied."""
    flags = {name: getattr(args, name) for name in ("peering", "liveness_port", "metrics_port", "bind", "log_level")}
    return Settings.from_env(env).model_copy(update={k: v for k, v in flags.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    # kopf imports the `kubernetes` package when it is installed (it is, for the tests and
    # benchmarks) only to recognise its model objects; the operator never passes those, and
    # the import costs ~60 MB per process. Keep it out.
    if "kopf" not in sys.modules:
        sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]
    import kopf
    from prometheus_client import start_http_server

    from . import handlers  # noqa: F401 - registers the handlers

    configure_logging("operator", settings.log_level)
    configure_tracing("operator")
    logging.getLogger("kopf").setLevel(logging.WARNING if settings.log_level.upper() == "INFO" else settings.log_level)
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.bind)
    liveness = f"http://{settings.bind}:{settings.liveness_port}/healthz" if settings.liveness_port else None
    loop = new_event_loop(settings.event_loop)  # the loop the tests run the operator on, too
    try:
        kopf.run(
            loop=loop,
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            standalone=args.standalone,
            peering_name=None if args.standalone else settings.peering,
            liveness_endpoint=liveness,
            memo=kopf.Memo(settings=settings, namespaces=tuple(args.namespace)),
        )
    finally:
        loop.close()
    return 0
