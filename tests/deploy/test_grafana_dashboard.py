"""The Grafana dashboard deploy/grafana/moeserve.json queries only metrics the running
application exports, and charts every one it exports. The exported names come from
`/metrics` of a live control plane (uvicorn on a free port, the in-memory provider, Redis
rate limits configured so their series exist), expanded by metric type into the sample
names Prometheus stores (`_total`, `_bucket`, `_sum`, `_count`)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.control_plane.conftest import live_server, make_settings
from tests.control_plane.fake_provider import InstantProvider
from tests.deploy.fetch_helm import REPO_ROOT

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "moeserve.json"
# What each metric type stores in Prometheus, by suffix.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}
# PromQL words that are neither metrics nor followed by '('.
KEYWORDS = {"bool", "and", "or", "unless", "offset", "group_left", "group_right", "inf", "nan"}
# Clauses whose parenthesised list holds label names, not expressions.
LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (Grafana variables allowed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery windows
    text = LABEL_LISTS.sub("", text)
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    text = re.sub(r"(?<![\w:])\d[\w.]*", "", text)  # numbers and durations
    names = set()
    for match in re.finditer(r"[A-Za-z_:][\w:]*", text):
        followed_by = text[match.end() :].lstrip()[:1]
        if followed_by != "(" and match.group().lower() not in KEYWORDS:
            names.add(match.group())
    return names


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row's panels


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and query variable."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = (
            variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        )
        series = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
        yield f"variable {variable['name']!r}", series.group(1) if series else query


def load_dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Family name -> the sample names it exports, from a live app's /metrics."""
    root = tmp_path_factory.mktemp("grafana")
    settings = make_settings(
        f"sqlite:///{root / 'moeserve.db'}",
        root,
        # Rate limits on Redis, as in the chart: its reachability series exist from the start
        # (nothing connects until a rate-limited query, so no Redis needs to answer here).
        redis_url="redis://127.0.0.1:9/0",
    )
    with live_server(settings, InstantProvider()) as server, server.client() as client:
        response = client.get("/metrics")
    assert response.status_code == 200, response.text
    families: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(response.text):
        suffixes = SUFFIXES.get(family.type, ("",))
        families[family.name] = {family.name + suffix for suffix in suffixes}
    return families


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, endpoint) (rate(a_seconds_bucket{x=~"$w", '
        'y="sum(b)"}[$__rate_interval]))) / ignoring(status) group_left c_total offset 5m '
        "+ on(instance) min(d) > bool 1e3"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "c_total", "d"}


def test_every_queried_metric_is_exported(exported: dict[str, set[str]]) -> None:
    names = set().union(*exported.values())
    unknown = []
    for where, expr in queries(load_dashboard()):
        used = metric_names(expr)
        assert used, f"{where}: no metric in {expr!r}"
        unknown += [f"{where}: {name}" for name in sorted(used - names)]
    assert not unknown, "the app exports no such metric:\n" + "\n".join(unknown)


def test_every_exported_metric_is_charted(exported: dict[str, set[str]]) -> None:
    used = set().union(*(metric_names(expr) for _, expr in queries(load_dashboard())))
    uncharted = sorted(
        family
        for family, samples in exported.items()
        if not samples & used and not family.endswith("_created")  # creation timestamps
    )
    # A metric the app grew since the dashboard was drawn: add a panel for it.
    assert not uncharted, f"metrics no panel shows: {uncharted}"


def test_panels_are_well_formed() -> None:
    dashboard = load_dashboard()
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"datasource", "workspace", "endpoint"} <= variables
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel.get("description"), panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            if "histogram_quantile" in expr:  # quantiles need the bucket bound kept
                assert "_bucket" in expr and re.search(r"by \(le\b", expr), expr


def test_dashboard_file_is_the_one_documented() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert DASHBOARD.relative_to(REPO_ROOT).as_posix() in readme
    assert Path(DASHBOARD).read_text().endswith("\n")
