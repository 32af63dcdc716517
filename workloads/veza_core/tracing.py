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
import random
import socket
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from opentelemetry import context, propagate, trace

log = logging.getLogger(__name__)

_configured: bool | None = None
# The share of new traces the sampler records (OTEL_TRACES_SAMPLER/_ARG): new_trace draws it itself, so an
# operation left out costs a random draw instead of an unsampled span.
_root_ratio = 1.0
HEAD_SAMPLED = "veza.head_sampled"  # a root whose sampling new_trace already decided


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
    global _root_ratio
    sampler, _root_ratio = _sampler()
    provider = TracerProvider(resource=resource, sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    AioHttpServerInstrumentor().instrument()
    AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call]
    RedisInstrumentor().instrument()
    _configured = True
    log.info("tracing on", extra={"otlp_endpoint": endpoint(), "sampler": os.environ.get("OTEL_TRACES_SAMPLER")})
    return True


def _sampler() -> tuple[Any, float]:
    """The sampler OTEL_TRACES_SAMPLER/_ARG name (the SDK's names and default), wrapped so that roots new_trace
    sampled already are recorded; and the share of new roots it records."""
    from opentelemetry.sdk.trace import sampling

    name = os.environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").lower()
    try:
        ratio = float(os.environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
    except ValueError:
        ratio = 1.0
    ratio = min(max(ratio, 0.0), 1.0)
    roots: dict[str, tuple[sampling.Sampler, float]] = {
        "always_on": (sampling.ALWAYS_ON, 1.0), "always_off": (sampling.ALWAYS_OFF, 0.0),
        "traceidratio": (sampling.TraceIdRatioBased(ratio), ratio)}
    root, share = roots.get(name.removeprefix("parentbased_"), roots["always_on"])
    inner = sampling.ParentBased(root) if name.startswith("parentbased_") else root

    class HeadSampled(sampling.Sampler):
        def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
                          attributes: Any = None, links: Any = None, trace_state: Any = None) -> Any:
            if attributes and attributes.get(HEAD_SAMPLED):
                return sampling.SamplingResult(sampling.Decision.RECORD_AND_SAMPLE, attributes)
            return inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return f"HeadSampled{{{inner.get_description()}}}"

    return HeadSampled(), share


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
    operation, not one per WebSocket session that would grow for hours. The ratio is drawn here: an operation
    left out gets no span at all (nor do the commit and deliveries it causes)."""
    if not _configured or random.random() >= _root_ratio:
        return NoSpan()
    current = trace.get_current_span().get_span_context()
    links = [trace.Link(current)] if current.is_valid else []
    attributes = {**kwargs.pop("attributes", {}), HEAD_SAMPLED: True}
    return tracer.start_as_current_span(name, context=context.Context(), links=links, attributes=attributes,
                                        **kwargs)


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
    if not _configured:  # tracing off: no cause can be sampled, skip looking at each
        return NoSpan()
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
