"""Every query of the analytics dashboard (charts/veza/files/dashboards/veza-analytics.json) runs on a real
PostgreSQL holding a filled analytics store, as the read-only role docs/analytics.md tells to create, after the
substitutions Grafana's PostgreSQL data source makes (template variables, then the time macros). Each panel must
return rows with the columns it draws; a misspelt column fails the test with the panel's title."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from tests.support.analytics import apply_schema, at, seed
from tests.support.db import fresh_database
from tests.support.packaging import CHART, helm
from veza_local.controlplane import tools_bin_dir
from veza_local.services import PostgresService

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "charts" / "veza" / "files" / "dashboards" / "veza-analytics.json"
DAY = date(2021, 3, 14)
# Grafana's time range: the two seeded days.
RANGE = (at(DAY, 0), at(DAY + timedelta(days=2), 0))
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)\b(?!\()")
MACRO = re.compile(r"\$(\w+)\(([^)]*)\)")  # Grafana's own pattern for the SQL macros


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def targets(dash: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(panel, target) for panel in dash["panels"] for target in panel.get("targets", [])]


def rfc3339(moment: datetime) -> str:
    """Go's time.RFC3339Nano of a UTC time, as the macros print it."""
    text = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return f"{text}Z"


def macros(sql: str, start: datetime, end: datetime) -> str:
    """The time macros of Grafana's PostgreSQL data source (pkg/tsdb/grafana-postgresql-datasource/macros.go)."""
    def one(match: re.Match[str]) -> str:
        name, args = match[1], [a.strip() for a in match[2].split(",")]
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{rfc3339(start)}' AND '{rfc3339(end)}'"
        if name == "__timeFrom":
            return f"'{rfc3339(start)}'"
        if name == "__timeTo":
            return f"'{rfc3339(end)}'"
        if name == "__time":
            return f'{args[0]} AS "time"'
        raise AssertionError(f"macro ${name} is not one the test knows how Grafana expands")

    return MACRO.sub(one, sql)


def quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def interpolate(sql: str, values: dict[str, list[str]]) -> str:
    """Template variables as the data source formats a multi-value one: each value a quoted literal, joined
    with commas (every value when All is selected)."""
    def one(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        if name not in values:
            raise KeyError(name)
        return ",".join(quote(v) for v in values[name])

    return VARIABLE.sub(one, sql)


@dataclass
class Store:
    url: str
    reader: str  # the read-only role Grafana's data source logs in as


@pytest.fixture(scope="module")
async def store(postgres: PostgresService) -> AsyncIterator[Store]:
    url = await fresh_database(postgres, "analytics_dash", migrated=False)
    await apply_schema(url)
    await seed(url, DAY)
    reader = f"grafana_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(url)
    try:  # the grants of docs/analytics.md ("Reading the figures")
        await conn.execute(f"CREATE ROLE {reader} NOLOGIN")
        await conn.execute(f"GRANT USAGE ON SCHEMA analytics TO {reader}")
        await conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA analytics TO {reader}")
    finally:
        await conn.close()
    yield Store(url, reader)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"DROP OWNED BY {reader}")
        await conn.execute(f"DROP ROLE {reader}")
    finally:
        await conn.close()


async def as_reader(store: Store, time_zone: str = "UTC") -> asyncpg.Connection:
    conn = await asyncpg.connect(store.url)
    await conn.execute(f"SET ROLE {store.reader}")
    await conn.execute(f"SET TIME ZONE {quote(time_zone)}")
    return conn


async def variable_values(conn: asyncpg.Connection, dash: dict[str, Any],
                          span: tuple[datetime, datetime] = RANGE) -> dict[str, list[str]]:
    """Each query variable with every value selected (the dashboard's default: All)."""
    values: dict[str, list[str]] = {}
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            values[var["name"]] = [r[0] for r in await conn.fetch(macros(var["query"], *span))]
    return values


async def run(conn: asyncpg.Connection, dash: dict[str, Any], span: tuple[datetime, datetime] = RANGE
              ) -> tuple[dict[str, list[asyncpg.Record]], list[str]]:
    """Each panel's rows by title, and what is wrong with them, prefixed by the panel's title."""
    values = await variable_values(conn, dash, span)
    rows: dict[str, list[asyncpg.Record]] = {}
    found: list[str] = []
    for panel, target in targets(dash):
        title = f"panel {panel['title']!r} ({target['refId']})"
        try:
            sql = macros(interpolate(target["rawSql"], values), *span)
            got = await conn.fetch(sql)
        except (KeyError, asyncpg.PostgresError) as exc:
            found.append(f"{title}: {type(exc).__name__}: {exc}")
            continue
        rows[panel["title"]] = got
        if not got:
            found.append(f"{title}: no rows")
            continue
        columns = list(got[0].keys())
        if target["format"] == "time_series":
            # Grafana's long format: a "time" column, an optional "metric" (the series name), numbers.
            if columns[0] != "time" or not isinstance(got[0]["time"], datetime):
                found.append(f"{title}: the first column must be a timestamp named time, not {columns}")
            numbers = [c for c in columns[1:] if c != "metric"]
            if not numbers or any(not isinstance(r[c], int | float) for r in got for c in numbers):
                found.append(f"{title}: no numeric value column in {columns}")
        else:
            wanted = list(next(t["options"]["indexByName"] for t in panel["transformations"]
                               if t["id"] == "organize"))
            if columns != wanted:
                found.append(f"{title}: columns {columns}, the table shows {wanted}")
    return rows, found


def test_the_dashboard_reads_the_analytics_database() -> None:
    dash = dashboard()
    assert dash["uid"] == "veza-analytics"
    source = next(v for v in dash["templating"]["list"] if v["name"] == "datasource")
    assert source["type"] == "datasource" and source["query"] == "grafana-postgresql-datasource"
    titles = {p["title"] for p in dash["panels"]}
    assert {"Messages per room per hour", "Active users per day", "Listener-minutes per channel and rendition",
            "Peak concurrent listeners per channel", "Peak connections per room", "Top tracks"} <= titles
    for panel, target in targets(dash):
        assert panel["datasource"] == target["datasource"] == {"type": "grafana-postgresql-datasource",
                                                               "uid": "${datasource}"}, panel["title"]
        assert target["rawQuery"] and target["format"] in ("time_series", "table"), panel["title"]


async def test_every_panel_returns_the_columns_it_draws(store: Store) -> None:
    dash = dashboard()
    conn = await as_reader(store)
    try:
        assert await variable_values(conn, dash) == {"room": ["general", "lobby"], "channel": ["jazz", "radio"]}
        rows, found = await run(conn, dash)
    finally:
        await conn.close()
    assert found == []
    assert sum(r["value"] for r in rows["Messages per room per hour"]) == 12 + 30 + 5 + 7
    assert [(r["time"], r["users"]) for r in rows["Active users per day"]] == [(at(DAY, 0), 3),
                                                                              (at(DAY + timedelta(days=1), 0), 1)]
    assert {(r["metric"], r["minutes"]) for r in rows["Listener-minutes per channel and rendition"]} == {
        ("radio mp3-128", 30.0), ("radio opus-64", 10.0), ("jazz mp3-128", 60.0), ("radio mp3-128", 1.5)}
    assert [(r["metric"], r["value"]) for r in rows["Peak concurrent listeners per channel"]] == [("radio", 42),
                                                                                                ("radio", 3)]
    assert [(r["metric"], r["value"]) for r in rows["Peak connections per room"]] == [("general", 17)]
    assert [(r["title"], r["plays"]) for r in rows["Top tracks"]] == [("Tone A", 9), ("Blue", 6), ("Tone B", 4)]


async def test_days_do_not_move_with_the_session_time_zone(store: Store) -> None:
    """Grafana's connection may not be in UTC: the days (UTC) and their times stay the same. From 11:00 to 11:00,
    so that a day taken in the session's zone would differ (at +14 h the range would start on the second day)."""
    dash = dashboard()
    results = []
    for zone in ("UTC", "Pacific/Kiritimati", "America/Los_Angeles"):
        conn = await as_reader(store, zone)
        try:
            rows, found = await run(conn, dash, (at(DAY, 11), at(DAY + timedelta(days=1), 11)))
        finally:
            await conn.close()
        assert found == [], zone
        results.append({title: [tuple(r.values()) for r in got] for title, got in rows.items()})
    assert results[0] == results[1] == results[2]
    assert [r[1] for r in results[0]["Active users per day"]] == [3, 1]


async def test_a_broken_panel_fails_with_its_title(store: Store) -> None:
    dash = dashboard()
    base = dash["panels"][0]
    dash["panels"] = [
        {**base, "title": "Misspelt column", "targets": [{**base["targets"][0], "rawSql": base["targets"][0]["rawSql"]
                                                          .replace("messages AS value", "mesages AS value")}]},
        {**base, "title": "Nothing in range", "targets": [{**base["targets"][0], "rawSql": base["targets"][0]["rawSql"]
                                                           .replace("$__timeFilter(hour)", "hour < '2000-01-01'")}]},
        {**base, "title": "Unknown variable", "targets": [{**base["targets"][0], "rawSql": base["targets"][0]["rawSql"]
                                                           .replace("$room", "$rooms")}]},
    ]
    conn = await as_reader(store)
    try:
        _, found = await run(conn, dash)
    finally:
        await conn.close()
    assert len(found) == 3, found
    assert found[0].startswith("panel 'Misspelt column' (A): UndefinedColumnError"), found
    assert found[1] == "panel 'Nothing in range' (A): no rows", found
    assert found[2].startswith("panel 'Unknown variable' (A): KeyError"), found


def test_the_chart_ships_it_next_to_the_overview() -> None:
    if not (tools_bin_dir() / "helm").exists():
        pytest.skip(f"helm is not built in {tools_bin_dir()}: run hack/build-tools.sh")
    rendered = helm("template", "veza", str(CHART), "--show-only", "templates/monitoring.yaml").stdout
    cm = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["veza-analytics.json"]) == dashboard()
    assert json.loads(cm["data"]["veza.json"])["uid"] == "veza-overview"
