"""The log schema (docs/schemas/logs/v1/log-line.json, docs/monitoring.md) holds for every line real
processes wrote; the event names of Veza's own loggers are the documented ones; the example log
shipping config (examples/logging/fluent-bit.yaml) reads the fields the lines carry."""

from __future__ import annotations

import ast
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.monitoring.fleet import Fleet, json_lines
from tests.monitoring.support import REPO

SCHEMA = json.loads((REPO / "docs" / "schemas" / "logs" / "v1" / "log-line.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
DOCS = REPO / "docs" / "monitoring.md"
FLUENT_BIT = REPO / "examples" / "logging" / "fluent-bit.yaml"
OURS = re.compile(r"^veza[._]")  # Veza's own loggers (veza.http, veza_stream.pump, ...)
LEVELS = ("debug", "info", "warning", "error", "exception", "critical")


def documented_events() -> dict[str, str]:
    """Event name -> level, from the events table of docs/monitoring.md (| `event` | level | ...)."""
    section = DOCS.read_text().split("### Events", 1)[1].split("\n## ", 1)[0]
    return {m[1]: m[2] for m in re.finditer(r"^\| `([^`]+)` \| (\w+) \|", section, re.MULTILINE)}


def events_in_code() -> dict[str, str]:
    """Every message the operator and the workers log through their own loggers, with its level."""
    found: dict[str, str] = {}
    roots = [REPO / "operator" / "veza_operator",
             *(REPO / "workloads" / p for p in ("veza_core", "veza_api", "veza_chat", "veza_stream"))]
    for path in (p for root in roots for p in root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in LEVELS and node.args):
                continue
            level = "error" if node.func.attr == "exception" else node.func.attr
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found[first.value] = level
            elif isinstance(first, ast.BinOp):  # "leadership " + ("acquired" if held else "lost")
                consts = [n.value for n in ast.walk(first) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
                for tail in consts[1:]:
                    found[consts[0] + tail] = level
    return found


def test_every_line_real_processes_wrote_matches_the_schema(fleet: Fleet) -> None:
    assert {"chat", "stream", "api"} <= set(fleet.logs)
    errors = []
    seen: dict[str, set[str]] = {}
    for component, path in fleet.logs.items():
        lines = json_lines(path)  # a line that is not a JSON object fails here
        assert lines, f"{component} wrote nothing"
        for number, entry in enumerate(lines, 1):
            for error in VALIDATOR.iter_errors(entry):
                errors.append(f"{component}:{number}: {error.message} in {json.dumps(entry)[:300]}")
            if entry.get("component") != component:
                errors.append(f"{component}:{number}: component {entry.get('component')!r}")
            seen.setdefault(component, set()).add(entry.get("msg", ""))
    assert errors == []
    # The traffic shows up: requests with their id, the room and the channel coming up.
    assert "chat room ready" in seen["chat"] and "request" in seen["api"], seen
    assert {"source on air", "request"} <= seen["stream"], seen["stream"]
    requests = [e for e in json_lines(fleet.logs["api"]) if e["msg"] == "request"]
    assert all(e.get("request_id") and isinstance(e["status"], int) for e in requests), requests


def test_the_processes_log_only_documented_events(fleet: Fleet) -> None:
    documented = documented_events()
    for component, path in fleet.logs.items():
        for entry in json_lines(path):
            if OURS.match(entry["logger"]):
                assert entry["msg"] in documented, f"{component}: undocumented event {entry['msg']!r} ({entry})"


def test_the_event_catalogue_is_what_the_code_logs() -> None:
    documented, logged = documented_events(), events_in_code()
    assert sorted(set(logged) - set(documented)) == [], "events logged but not in docs/monitoring.md"
    assert sorted(set(documented) - set(logged)) == [], "events in docs/monitoring.md that nothing logs"
    wrong = {e: (documented[e], level) for e, level in logged.items() if documented[e] != level}
    assert wrong == {}, "documented level differs from the code's"


def fluent_bit_config() -> dict[str, Any]:
    return dict(yaml.safe_load(FLUENT_BIT.read_text()))


def strptime_format(fluent_format: str) -> str:
    """Fluent Bit's Time_Format in Python's terms (%L, fractional seconds, is Python's %f)."""
    return fluent_format.replace("%L", "%f")


def test_the_fluent_bit_example_reads_the_fields_the_lines_carry(fleet: Fleet) -> None:
    """No Fluent Bit binary here: the config is checked by what it names. Its parser's time key and
    format must parse the `ts` of real lines; each field it filters on, keys or labels by must be a
    base field of the schema (present on every line) or one the lines carry."""
    config = fluent_bit_config()
    parsers = {p["name"]: p for p in config["parsers"]}
    parser = parsers["veza-json"]
    assert parser["format"] == "json"
    base = set(SCHEMA["required"])
    assert parser["time_key"] in base
    lines = [e for path in fleet.logs.values() for e in json_lines(path)]
    for entry in lines:
        parsed = datetime.strptime(entry[parser["time_key"]], strptime_format(parser["time_format"]))
        assert abs((parsed.replace(tzinfo=UTC) - datetime.now(UTC)).total_seconds()) < 3600, entry
    assert parser.get("time_keep") in ("on", "On", True), "keep ts in the record for Elasticsearch/Loki queries"

    pipeline = config["pipeline"]
    named_parsers = {f["parser"] for f in pipeline["filters"] if f["name"] == "parser"}
    assert named_parsers == {"veza-json"}, named_parsers
    referenced: set[str] = set()
    for step in [*pipeline["filters"], *pipeline["outputs"]]:
        for key, value in step.items():
            text = json.dumps(value)
            referenced |= set(re.findall(r"\$(\w+)", text))  # record accessors: $level, $component
            if key in ("key", "label_keys", "remove_keys", "logstash_prefix_key"):
                referenced |= {v.lstrip("$") for v in re.split(r"[,\s]+", str(value)) if v}
        if step["name"] == "grep":
            for rule in ("regex", "exclude"):
                if rule in step:
                    field, pattern = str(step[rule]).split(" ", 1)
                    if not field.startswith("$"):  # a plain key of the record
                        referenced.add(field)
                    if field == "level":
                        levels = SCHEMA["properties"]["level"]["enum"]
                        assert any(re.search(pattern, lv) for lv in levels), f"grep {rule} {pattern}: no level"
    referenced -= {"log", "kubernetes"}  # the container runtime's line and the kubernetes filter's metadata
    assert referenced, "the config names no field of the lines"
    carried = base | {k for e in lines for k in e}
    assert referenced <= carried, f"fields the config uses that no line carries: {sorted(referenced - carried)}"
    assert {"level", "component"} <= referenced, "Loki labels / ES keys by level and component"


def test_the_example_is_shipped_with_its_readme() -> None:
    readme = Path(FLUENT_BIT.parent / "README.md").read_text()
    assert "fluent-bit.yaml" in readme and "log-line.json" in readme
