"""Monitoring assets: alert rules and the dashboard use only metrics the code exports, and every alert
links a runbook that exists."""

from __future__ import annotations

import json
import re

import yaml

from tests.support.packaging import CHART, REPO, helm

RULES = CHART / "files" / "prometheus-rules.yaml"
DASHBOARD = CHART / "files" / "dashboards" / "veza.json"
DEFINED = re.compile(r"""(Counter|Gauge|Histogram|Summary)\(\s*["'](veza_[a-z0-9_]+)["']""")
USED = re.compile(r"\b(veza_[a-z0-9_]+)\b")


def exported_metrics() -> set[str]:
    """Every series name the operator and the workers export (histograms add _bucket/_sum/_count)."""
    names: set[str] = set()
    for path in [*(REPO / "operator").rglob("*.py"), *(REPO / "workloads").rglob("*.py")]:
        for kind, name in DEFINED.findall(path.read_text()):
            names.add(name)
            if kind in ("Histogram", "Summary"):
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_the_metric_list_is_what_the_code_exports() -> None:
    exported = exported_metrics()
    for name in ("veza_operator_reconciles_total", "veza_operator_reconcile_duration_seconds_bucket",
                 "veza_operator_queue_depth", "veza_chat_connections", "veza_stream_listeners",
                 "veza_http_requests_total"):
        assert name in exported


def test_alerts_use_exported_metrics_and_link_existing_runbooks() -> None:
    exported = exported_metrics()
    alerts = rules()
    assert len(alerts) >= 10
    for rule in alerts:
        unknown = set(USED.findall(rule["expr"])) - exported
        assert not unknown, f"{rule['alert']} uses metrics nobody exports: {unknown}"
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        runbook = REPO / "docs" / "runbooks" / f"{rule['alert']}.md"
        assert runbook.exists(), f"no runbook for {rule['alert']}"
        assert runbook.read_text().startswith(f"# {rule['alert']}\n")
    rendered = helm("template", "veza", str(CHART), "--api-versions", "monitoring.coreos.com/v1/PrometheusRule",
                    "--set", "metrics.prometheusRule.runbookBaseURL=https://docs.example/runbooks/",
                    "--show-only", "templates/monitoring.yaml").stdout
    rule_obj = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "PrometheusRule")
    rendered_rules = [r for g in rule_obj["spec"]["groups"] for r in g["rules"]]
    assert [r["alert"] for r in rendered_rules] == [r["alert"] for r in alerts]
    for r in rendered_rules:
        assert r["annotations"]["runbook_url"] == f"https://docs.example/runbooks/{r['alert']}.md"
    errors = next(r for r in rendered_rules if r["alert"] == "VezaOperatorReconcileErrors")
    assert "{{ $labels.kind }}" in errors["annotations"]["summary"], "Prometheus templates survive Helm"


def test_dashboard_covers_chat_stream_and_operator_with_exported_metrics() -> None:
    exported = exported_metrics()
    exprs = dashboard_exprs()
    used = {m for e in exprs for m in USED.findall(e)}
    assert not used - exported, used - exported
    for prefix in ("veza_operator_", "veza_chat_", "veza_stream_", "veza_http_"):
        assert any(m.startswith(prefix) for m in used), prefix
    for expr in exprs:  # balanced brackets: a typo in PromQL shows up here first
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}")
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "veza-overview" and {v["name"] for v in dash["templating"]["list"]} == {
        "datasource", "namespace"}
    cm = next(d for d in yaml.safe_load_all(helm("template", "veza", str(CHART), "--show-only",
                                                 "templates/monitoring.yaml").stdout) if d)
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["veza.json"]) == dash
