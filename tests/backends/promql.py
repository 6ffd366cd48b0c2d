"""Every PromQL expression the project ships, with where it comes from, and helpers to inspect them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from .repo import GRAFANA_ALERTS, GRAFANA_DASHBOARDS, PROMETHEUS_RULES

# Grafana's variables, replaced by values Prometheus accepts: `$model` matches every model.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
    "$model": ".*",
}
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


@dataclass(frozen=True)
class Query:
    source: str  # "dashboard", "grafana-alert" or "prometheus-rule"
    id: str  # stable, human-readable: <dashboard uid>/<panel title>/<refId>, or the alert name
    expr: str

    @property
    def promql(self) -> str:
        """The expression with Grafana's variables substituted."""
        expr = self.expr
        for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda item: -len(item[0])):
            expr = expr.replace(variable, value)
        return expr


def load_dashboard(path: Any) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[Query]:
    queries = []
    for path in GRAFANA_DASHBOARDS:
        dashboard = load_dashboard(path)
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                if "expr" in target:
                    query_id = f"{dashboard['uid']}/{panel['title']}/{target['refId']}"
                    queries.append(Query("dashboard", query_id, target["expr"]))
    return queries


def grafana_alert_rules() -> list[dict[str, Any]]:
    with GRAFANA_ALERTS.open(encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    return [rule for group in document["groups"] for rule in group["rules"]]


def grafana_alert_queries() -> list[Query]:
    return [
        Query("grafana-alert", f"grafana-alert/{rule['title']}/{data['refId']}", data["model"]["expr"])
        for rule in grafana_alert_rules()
        for data in rule["data"]
        if "expr" in data.get("model", {})
    ]


def prometheus_rules() -> list[dict[str, Any]]:
    with PROMETHEUS_RULES.open(encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    return [rule for group in document["groups"] for rule in group["rules"]]


def prometheus_rule_queries() -> list[Query]:
    return [
        Query("prometheus-rule", f"prometheus-rule/{rule.get('alert') or rule['record']}", rule["expr"])
        for rule in prometheus_rules()
    ]


def all_queries() -> list[Query]:
    return dashboard_queries() + grafana_alert_queries() + prometheus_rule_queries()


def names(expr: str) -> set[str]:
    """Metric and label names in an expression (identifiers outside strings, keywords included)."""
    return set(_IDENTIFIER.findall(_STRING.sub('""', expr)))


def project_names(expr: str) -> set[str]:
    """The names that come from corevital_otel's telemetry (everything gen_ai_* or corevital_*)."""
    return {name for name in names(expr) if name.startswith(("gen_ai_", "corevital_"))}


def grouping_labels(expr: str) -> set[str]:
    """Labels named in `by (...)` / `without (...)` clauses."""
    labels: set[str] = set()
    for group in _GROUPING.findall(expr):
        labels.update(label.strip() for label in group.split(",") if label.strip())
    return labels


def normalize(expr: str) -> str:
    """Whitespace-insensitive form, for comparing two spellings of one expression."""
    expr = re.sub(r"\s+", " ", expr).strip()
    return re.sub(r"\s*([(){}\[\],/])\s*", r"\1", expr)
