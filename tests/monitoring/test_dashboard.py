"""Every query of the Grafana dashboard returns data from a real Prometheus scraping real workers
(tests/monitoring/conftest.py): a panel on a metric nobody exports, a misspelt label or a PromQL
error fails the test with the panel's title."""

from __future__ import annotations

import math
import re
from typing import Any

from tests.monitoring.fleet import Fleet
from tests.monitoring.support import dashboard
from veza_local.prometheus import PrometheusService

METRIC = re.compile(r"\b(veza_[a-z0-9_]+)\b")
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
LABEL_VALUES = re.compile(r"^label_values\((.+),\s*(\w+)\)$")
# Grafana's own interval variables, as it would set them for a 1 h range.
BUILTINS = {"__rate_interval": "5m", "__interval": "15s", "__range": "1h"}


def panels(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every panel, rows' collapsed children included."""
    out = []
    for panel in items:
        out.append(panel)
        out += panels(panel.get("panels") or [])
    return out


def regex_escape(value: str) -> str:
    """A value inside a PromQL regex string, escaped as Grafana's Prometheus data source does."""
    return re.sub(r"([\\$^*{}\[\]'+?.()|])", r"\\\\\1", value)


def variables(dash: dict[str, Any], prometheus: PrometheusService) -> dict[str, str]:
    """Each query variable set as Grafana would with every value selected: its values from the
    variable's own query, as a regex alternation (Grafana's multi-value format for Prometheus)."""
    values = dict(BUILTINS)
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = LABEL_VALUES.match(query.strip())
        assert match, f"variable {var['name']}: only label_values(metric, label) is understood here: {query}"
        found = prometheus.api(f"label/{match[2]}/values", **{"match[]": match[1]})
        assert found, f"variable {var['name']}: {query} has no values"
        values[var["name"]] = "(" + "|".join(regex_escape(v) for v in found) + ")"
    return values


def substitute(expr: str, values: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        if name not in values:
            raise KeyError(name)
        return values[name]

    return VARIABLE.sub(one, expr)


def problems(dash: dict[str, Any], prometheus: PrometheusService) -> list[str]:
    """What is wrong with each panel query against this Prometheus, prefixed by the panel's title."""
    values = variables(dash, prometheus)
    # Names Prometheus scraped (metadata holds families even before they have a sample).
    known = set(prometheus.api("label/__name__/values")) | set(prometheus.api("metadata"))
    found = []
    for panel in panels(dash["panels"]):
        for query in panel.get("targets", []):
            title = f"panel {panel.get('title')!r} ({query.get('refId')})"
            try:
                expr = substitute(query["expr"], values)
            except KeyError as exc:
                found.append(f"{title}: unknown variable ${exc.args[0]} in {query['expr']}")
                continue
            missing = {m for m in METRIC.findall(expr) if m not in known
                       and re.sub(r"_(bucket|sum|count)$", "", m) not in known}
            if missing:
                found.append(f"{title}: no target exports {sorted(missing)}")
                continue
            try:
                result = prometheus.query(expr)
            except ValueError as exc:
                found.append(f"{title}: {exc}")
                continue
            if not result:
                found.append(f"{title}: no series for {expr}")
    return found


# Queries the fleet's traffic must move off zero (a message sent and delivered, a playlist on air...).
# Not the chat error codes nor the listener refusals: those children are created by their first
# increment, and rate() does not count the increment that creates a series.
MOVED_BY_TRAFFIC = [("Open WebSocket connections", "A"), ("Messages in and out per second", "B"),
                    ("Messages in and out per second", "C"), ("Ack and fan-out latency p99", "A"),
                    ("Ack and fan-out latency p99", "B"), ("Source on air and HLS segments", "A"),
                    ("Source on air and HLS segments", "B"), ("Reconciles per second", "A"),
                    ("HTTP requests by component and status", "A"), ("Backing services reachable", "A")]


def test_every_dashboard_query_returns_series(fleet: Fleet) -> None:
    dash = dashboard()
    queries = {(p["title"], q["refId"]): q["expr"] for p in panels(dash["panels"]) for q in p.get("targets", [])}
    assert len(queries) >= 20
    assert problems(dash, fleet.prometheus) == []
    values = variables(dash, fleet.prometheus)
    for key in MOVED_BY_TRAFFIC:
        samples = [float(s["value"][1]) for s in fleet.prometheus.query(substitute(queries[key], values))]
        assert any(v > 0 and math.isfinite(v) for v in samples), (key, samples)


def test_the_panels_on_call_asks_for_first_are_there() -> None:
    exprs = {p["title"]: " ".join(q["expr"] for q in p.get("targets", [])) for p in panels(dashboard()["panels"])}
    wanted = {
        "Open WebSocket connections": "veza_chat_connections",
        "Messages in and out per second": "veza_chat_deliveries_total",
        "Ack and fan-out latency p99": "veza_chat_fanout_seconds_bucket",
        "Listeners per channel and rendition": "rendition",
        "Off-air channels": "veza_stream_source_active",
        "Reconcile errors and retries per second": 'result="error"',
        "Reconcile queue depth": "veza_operator_queue_depth",
        "Circuit breaker states": "veza_circuit_open",
        "Backing services reachable": "veza_dependency_up",
    }
    for title, needle in wanted.items():
        assert title in exprs, f"no panel {title!r}"
        assert needle in exprs[title], (title, exprs[title])


def test_a_panel_on_a_metric_nobody_exports_fails_with_its_title(fleet: Fleet) -> None:
    dash = dashboard()
    ghost = 'sum(rate(veza_chat_ghosts_total{namespace=~"$namespace"}[5m]))'
    dash["panels"] = [*dash["panels"],
                      {"type": "timeseries", "title": "Ghost panel", "targets": [{"refId": "A", "expr": ghost}]},
                      {"type": "timeseries", "title": "Wrong label",
                       "targets": [{"refId": "A", "expr": 'sum(veza_chat_connections{room="nope"})'}]}]
    found = problems(dash, fleet.prometheus)
    assert len(found) == 2, found
    assert found[0].startswith("panel 'Ghost panel' (A): no target exports ['veza_chat_ghosts_total']"), found
    assert found[1].startswith("panel 'Wrong label' (A): no series"), found
