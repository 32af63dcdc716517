"""Traces over OTLP, on when the standard OpenTelemetry variables ask for them (docs/monitoring.md#traces).

``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) switches tracing on: the SDK is
installed with a batch exporter over OTLP/HTTP, the sampler the SDK reads from ``OTEL_TRACES_SAMPLER`` /
``OTEL_TRACES_SAMPLER_ARG`` (the operator sets ``parentbased_traceidratio`` and the platform's ratio), and the
maintained instrumentations for aiohttp servers, asyncpg and redis-py. Without an endpoint nothing is
installed: the API's no-op tracer is all the code meets, so tracing off costs a context lookup per span.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from opentelemetry import context, propagate, trace

log = logging.getLogger(__name__)

_configured: bool | None = None


def enabled() -> bool:
    """Whether this process exports traces (configure_tracing found an endpoint)."""
    return bool(_configured)


def endpoint() -> str | None:
    return os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")


def configure_tracing(component: str) -> bool:
    """Install the SDK once per process when an OTLP endpoint is configured; whether tracing is on.

    Call it before the aiohttp application is built: the server instrumentation adds its middleware to
    applications created afterwards.
    """
    global _configured
    if _configured is not None:
        return _configured
    _configured = False
    if not endpoint():
        return False
    # Imported here: a process without an endpoint never loads the SDK, the exporter or the patches.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES, when set, win over these defaults.
    # The pod's name is the instance on a cluster; the pid tells processes of one host apart.
    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or f"veza-{component}",
                                SERVICE_INSTANCE_ID: os.environ.get("HOSTNAME") or socket.gethostname(),
                                "process.pid": os.getpid()})
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER(_ARG)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    AioHttpServerInstrumentor().instrument()
    AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call]
    RedisInstrumentor().instrument()
    _configured = True
    log.info("tracing on", extra={"otlp_endpoint": endpoint(), "sampler": os.environ.get("OTEL_TRACES_SAMPLER")})
    return True


def current_ids() -> tuple[str, str] | None:
    """The current span's trace and span ids in their hex form, or None outside a sampled span (a log line
    names only traces the store can show)."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


# Spans of a hot path (a chat message) exist only inside a trace: with tracing off, or when nothing sampled
# started one, these return a null context and the message pays a check, not a span.
NoSpan = nullcontext


def new_trace(tracer: trace.Tracer, name: str, **kwargs: Any) -> AbstractContextManager[Any]:
    """A root span (its own trace, sampled at the ratio) linked to the current span: one trace per chat
    operation, not one per WebSocket session that would grow for hours."""
    if not _configured:
        return NoSpan()
    current = trace.get_current_span().get_span_context()
    links = [trace.Link(current)] if current.is_valid else []
    return tracer.start_as_current_span(name, context=context.Context(), links=links, **kwargs)


def child_span(tracer: trace.Tracer, name: str, **kwargs: Any) -> AbstractContextManager[Any]:
    """A span below the current one, or nothing when no span is current."""
    if not trace.get_current_span().get_span_context().is_valid:
        return NoSpan()
    return tracer.start_as_current_span(name, **kwargs)


def remote_span(tracer: trace.Tracer, name: str, headers: Mapping[str, str] | None,
                **kwargs: Any) -> AbstractContextManager[Any]:
    """A span continuing the trace a message's headers carry (`traceparent`), or nothing without one."""
    if not _configured or not headers or "traceparent" not in headers:
        return NoSpan()
    return tracer.start_as_current_span(name, context=propagate.extract(headers), **kwargs)


def batch_span(tracer: trace.Tracer, name: str, causes: Sequence[trace.SpanContext],
               **kwargs: Any) -> AbstractContextManager[Any]:
    """A span for work done for many callers at once (a group commit): the child of the first sampled
    cause, linked to the others (at most 32), so each sampled caller's trace continues through it; nothing
    when no cause was traced."""
    sampled = [c for c in causes if c.is_valid and c.trace_flags.sampled]
    if not sampled:
        return NoSpan()
    links = [trace.Link(c) for c in sampled[1:33]]
    return tracer.start_as_current_span(name, context=trace.set_span_in_context(trace.NonRecordingSpan(sampled[0])),
                                        links=links, **kwargs)


def inject() -> dict[str, str]:
    """The current context as W3C headers (`traceparent`), to send along a NATS message; empty when no
    span is current."""
    if not trace.get_current_span().get_span_context().is_valid:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier
