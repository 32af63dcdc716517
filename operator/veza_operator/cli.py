"""`veza operator`: run the kopf operator."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from veza_core.logs import configure_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace", action="append", default=[],
                        help="watch only this namespace (repeatable); default: all namespaces")
    parser.add_argument("--peering", default=os.environ.get("VEZA_PEERING", "veza"),
                        help="peering name: replicas with the same name keep one active (default: veza)")
    parser.add_argument("--standalone", action="store_true", help="no peering (a single replica)")
    parser.add_argument("--liveness-port", type=int, default=int(os.environ.get("VEZA_LIVENESS_PORT", "8080")),
                        help="serve /healthz on this port (0: off)")
    parser.add_argument("--metrics-port", type=int, default=int(os.environ.get("VEZA_METRICS_PORT", "9090")),
                        help="serve Prometheus metrics on this port (0: off)")
    parser.add_argument("--bind", default=os.environ.get("VEZA_BIND", "0.0.0.0"),
                        help="address for the liveness and metrics ports")
    parser.add_argument("--log-level", default=os.environ.get("VEZA_LOG_LEVEL", "INFO"))


def run(args: argparse.Namespace) -> int:
    # kopf imports the `kubernetes` package when it is installed (it is, for the tests and
    # benchmarks) only to recognise its model objects; the operator never passes those, and
    # the import costs ~60 MB per process. Keep it out.
    if "kopf" not in sys.modules:
        sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]
    import kopf
    from prometheus_client import start_http_server

    from . import handlers  # noqa: F401 - registers the handlers

    configure_logging("operator", args.log_level)
    logging.getLogger("kopf").setLevel(logging.WARNING if args.log_level.upper() == "INFO" else args.log_level)
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.bind)
    liveness = f"http://{args.bind}:{args.liveness_port}/healthz" if args.liveness_port else None
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=args.standalone,
        peering_name=None if args.standalone else args.peering,
        liveness_endpoint=liveness,
    )
    return 0
