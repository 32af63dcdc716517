"""The alerts evaluated by promtool: each fires on the series it is about, with its labels and
annotations, and stays silent on healthy ones (tests/monitoring/alerts.test.yaml); the rules as Helm
renders them into the PrometheusRule are valid, behave the same, and link runbooks that exist."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.monitoring.support import ALERT_TESTS, HERE, REPO, RULES, alert_rules, prometheus_binary
from tests.support.packaging import CHART, helm

RUNBOOKS = REPO / "docs" / "runbooks"
BASE_URL = "https://docs.example/veza/runbooks"


def promtool(*args: str, cwd: Path = HERE) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([prometheus_binary("promtool"), *args], cwd=cwd, capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode == 0, f"promtool {' '.join(args)} failed ({result.returncode}):\n" \
                                   f"{result.stdout}\n{result.stderr}"
    return result


def test_every_alert_fires_on_its_series_and_stays_silent_on_healthy_ones() -> None:
    out = promtool("test", "rules", ALERT_TESTS.name)
    assert "SUCCESS" in out.stdout + out.stderr


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    assert [(HERE / f).resolve() for f in tests["rule_files"]] == [RULES]
    fired: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
            for alert in check.get("exp_alerts") or []:
                assert alert.get("exp_annotations"), f"{check['alertname']}: a firing case checks annotations"
    names = {r["alert"] for r in alert_rules()}
    assert names - fired == set(), f"alerts never shown firing: {sorted(names - fired)}"
    assert names - silent == set(), f"alerts never shown silent: {sorted(names - silent)}"
    assert (fired | silent) - names == set(), f"tests of alerts the rules do not have: {(fired | silent) - names}"


def test_the_rendered_prometheus_rule_is_valid_and_links_existing_runbooks(tmp_path: Path) -> None:
    prometheus_binary("promtool")
    rendered = helm("template", "veza", str(CHART), "--api-versions", "monitoring.coreos.com/v1/PrometheusRule",
                    "--set", f"metrics.prometheusRule.runbookBaseURL={BASE_URL}/",
                    "--show-only", "templates/monitoring.yaml").stdout
    rule = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "PrometheusRule")
    rules_file = tmp_path / "rendered-rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    promtool("check", "rules", str(rules_file))

    urls = {r["alert"]: r["annotations"]["runbook_url"] for r in alert_rules(rules_file)}
    assert set(urls) == {r["alert"] for r in alert_rules()}
    for alert, url in urls.items():
        assert url.startswith(BASE_URL + "/"), url
        runbook = RUNBOOKS / url.removeprefix(BASE_URL + "/")
        assert runbook.is_file(), f"{alert}: {url} names no file in docs/runbooks"
        assert runbook.read_text().startswith(f"# {alert}\n"), runbook

    # The same unit tests against the rendered rules: Helm left the Prometheus templates intact, and each
    # alert carries its runbook_url.
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    tests["rule_files"] = [rules_file.name]
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            for alert in check.get("exp_alerts") or []:
                alert["exp_annotations"]["runbook_url"] = urls[check["alertname"]]
    (tmp_path / "rendered.test.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    promtool("test", "rules", "rendered.test.yaml", cwd=tmp_path)
