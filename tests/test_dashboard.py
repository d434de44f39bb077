"""config/grafana-dashboard.json: valid, and every expression reads a metric kdns exports.

Metric names are parsed out of each PromQL `expr` (and the template variables' queries) and
looked up in the golden list (tests/golden/metrics.txt), so a renamed metric cannot leave the
dashboard graphing nothing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.test_metrics_golden import golden

DASHBOARD = Path(__file__).resolve().parents[1] / "config" / "grafana-dashboard.json"

# PromQL words that look like identifiers but are not metrics (functions are followed by "(").
KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana label_values query) reads."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    text = re.sub(r"\boffset\s+\S+", "", text)  # offset 5m
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        after = text[match.end() :].lstrip()
        if after.startswith("(") or word.lower() in KEYWORDS:
            continue
        if word == "label_values" or text[: match.start()].rstrip().endswith(","):
            continue  # label_values(metric, LABEL): the label is not a metric
        names.add(word)
    return names


def exported_name(name: str, table: dict[str, Any]) -> str | None:
    """The golden entry a series name belongs to (a histogram's _bucket, _sum, _count)."""
    if name in table:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and table.get(base, ("",))[0] == "histogram":
            return base
    return None


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'histogram_quantile(0.99, sum by (le, to) (rate(kdns_forward_request_duration_seconds_bucket{instance=~"$instance"}[$__rate_interval])))',
            {"kdns_forward_request_duration_seconds_bucket"},
        ),
        (
            "sum by (zones) (rate(kdns_cache_hits_total[5m])) / sum by (zones) (rate(kdns_cache_requests_total[5m]))",
            {"kdns_cache_hits_total", "kdns_cache_requests_total"},
        ),
        ('process_resident_memory_bytes{job="kdns", le="x"}', {"process_resident_memory_bytes"}),
        ("label_values(kdns_build_info, instance)", {"kdns_build_info"}),
        ('a_total{rcode!="NOERROR"} and on (to) b_total offset 5m', {"a_total", "b_total"}),
    ],
)
def test_metric_names_are_parsed_out_of_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def expressions(dashboard: dict[str, Any]) -> list[str]:
    out = []
    for panel in dashboard["panels"]:
        for sub in [panel, *panel.get("panels", [])]:
            out += [target["expr"] for target in sub.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if variable["type"] == "query":
            out.append(query["query"] if isinstance(query, dict) else query)
    return out


def test_every_expression_reads_an_exported_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    table = golden()
    exprs = expressions(dashboard)
    assert len(exprs) >= 20
    read: set[str] = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        for name in names:
            found = exported_name(name, table)
            assert found is not None, f"{name} (in {expr!r}) is not a metric kdns exports"
            read.add(found)
    # What the dashboard is for: requests by type and rcode, latency from the histogram, cache
    # hit ratio, forward errors, programming latency, proxy sync duration, memory, and every
    # series of the receive threads' relay of forwarded misses.
    assert read >= {
        "kdns_dns_requests_total",
        "kdns_dns_responses_total",
        "kdns_dns_request_duration_seconds",
        "kdns_cache_hits_total",
        "kdns_cache_requests_total",
        "kdns_forward_errors_total",
        "kdns_forward_request_duration_seconds",
        "kdns_kubernetes_dns_programming_duration_seconds",
        "kdns_proxy_sync_duration_seconds",
        "process_resident_memory_bytes",
    }
    relay = {name for name in table if name.startswith("kdns_forward_relay_")}
    assert len(relay) >= 5
    assert read >= relay


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert names == {"datasource", "instance"}
