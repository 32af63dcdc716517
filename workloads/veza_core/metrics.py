"""Prometheus metrics shared by every worker (each workload adds its own next to these)."""

from __future__ import annotations

from functools import lru_cache

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "veza_http_requests_total", "HTTP requests served", ["component", "route", "method", "status"])
HTTP_LATENCY = Histogram(
    "veza_http_request_duration_seconds", "HTTP request latency", ["component", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
DEPENDENCY_UP = Gauge(
    "veza_dependency_up", "1 when a backing service answers, 0 when it does not", ["component", "dependency"])
CIRCUIT_OPEN = Gauge(
    "veza_circuit_open", "1 while a circuit breaker is open (calls go to the local fallback)", ["name"])
BUS_REJECTED = Counter(
    "veza_bus_rejected_total", "Messages from NATS dropped as malformed, out of bounds or unconfirmed",
    ["subject_kind", "reason"])
DB_READS = Counter(
    "veza_db_reads_total", "Reads routed between the read replica and the primary (counted only with a replica set)",
    ["target", "reason"])
DB_REPLICA_LAG = Gauge(
    "veza_db_replica_lag_seconds", "Replay lag of the read replica, measured against the primary's WAL position")
GC_PAUSE = Histogram(
    "veza_gc_pause_seconds", "How long each collection of the cyclic garbage collector stopped the process (and its "
    "event loop), by generation (2: a full collection)", ["generation"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))


# Every request counts into one child of each: `.labels()` validates, joins and locks on every call, so the children
# are kept by their labels (bounded: the method is the client's to invent).
@lru_cache(maxsize=4096)
def http_requests(component: str, route: str, method: str, status: int) -> Counter:
    return HTTP_REQUESTS.labels(component, route, method, str(status))


@lru_cache(maxsize=1024)
def http_latency(component: str, route: str) -> Histogram:
    return HTTP_LATENCY.labels(component, route)


@lru_cache(maxsize=3)
def gc_pause(generation: int) -> Histogram:
    return GC_PAUSE.labels(str(generation))
