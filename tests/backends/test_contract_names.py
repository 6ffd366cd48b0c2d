"""The Prometheus names in docs/telemetry.md follow the Collector's translation, and every name a
dashboard or alert rule uses is one of them (or one of their labels)."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import contract, promql


@pytest.mark.parametrize("metric", contract.metrics(), ids=lambda metric: metric.name)
def test_documented_prometheus_name_follows_the_translation(metric: contract.ContractMetric) -> None:
    assert metric.prometheus_name == contract.prometheus_name(metric.name, metric.unit, metric.kind)


@pytest.mark.parametrize(
    ("name", "unit", "kind", "expected"),
    [
        ("gen_ai.client.operation.duration", "s", "histogram", "gen_ai_client_operation_duration_seconds"),
        ("corevital.token.entropy", "bit", "histogram", "corevital_token_entropy_bit"),
        ("corevital.risk.score", "1", "histogram", "corevital_risk_score"),
        ("corevital.risk.score", "1", "gauge", "corevital_risk_score_ratio"),
        ("corevital.generations", "{generation}", "counter", "corevital_generations_total"),
        ("http.server.duration.seconds", "s", "histogram", "http_server_duration_seconds"),
        ("requests.total", "1", "counter", "requests_total"),
        ("memory.usage", "By", "gauge", "memory_usage_bytes"),
    ],
)
def test_translation_rule(name: str, unit: str, kind: str, expected: str) -> None:
    assert contract.prometheus_name(name, unit, kind) == expected


def _contract_names() -> set[str]:
    names: set[str] = set()
    for metric in contract.metrics():
        names.update(metric.series_names)
        names.update(metric.label_names)
    return names


@pytest.mark.parametrize("query", promql.all_queries(), ids=lambda query: query.id)
def test_query_uses_only_contract_names(query: promql.Query) -> None:
    unknown = promql.project_names(query.promql) - _contract_names()
    assert not unknown, f"{query.id}: {sorted(unknown)} are not in docs/telemetry.md"
    labels = promql.grouping_labels(query.expr) - {"le"}
    assert labels <= _contract_names(), f"{query.id}: grouping by {sorted(labels)}"


def test_contract_table_is_complete() -> None:
    names = {metric.name for metric in contract.metrics()}
    assert {
        "gen_ai.client.operation.duration",
        "gen_ai.client.token.usage",
        "gen_ai.server.time_to_first_token",
        "gen_ai.server.time_per_output_token",
        "corevital.token.entropy",
        "corevital.token.surprisal",
        "corevital.risk.score",
        "corevital.generations",
        "corevital.health.flags",
        "corevital.interventions",
        "corevital.plugin.errors",
    } <= names


@pytest.mark.parametrize("path", promql.GRAFANA_DASHBOARDS, ids=lambda path: path.stem)
def test_template_variables_use_contract_names(path: Path) -> None:
    for variable in promql.load_dashboard(path)["templating"]["list"]:
        if variable["type"] == "query":
            used = promql.project_names(variable["query"]["query"])
            assert used and used <= _contract_names(), f"${variable['name']}: {sorted(used)}"
