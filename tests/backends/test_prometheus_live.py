"""Live tier: a real Prometheus, fed by real instrumented generate() calls, answers every dashboard query
with the names docs/telemetry.md promises.

Metrics that plugins not written yet emit (risk, health, interventions) may be absent: queries that need
them are skipped one by one, naming the metric, and the set of such queries is pinned below, so nothing
passes silently.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from opentelemetry.sdk.trace import TracerProvider

import corevital_otel
from corevital_otel import hookimpl
from tests.support.tiny_models import build_model, prompt_batch

from . import contract, live_stack, promql
from .prometheus_backend import IMAGE, LivePrometheus, live_prometheus
from .tiers import choose

# Emitted only when something happens that these generations may not provoke: waited for, skipped by name
# while absent. Everything else in the contract (the risk plugin's score and generation counts included)
# must arrive, or the tier fails.
PENDING = {
    "corevital_health_flags_total": "the health plugin emits it, only when a flag fires",
}
NOT_PROVOKED = {
    "corevital_interventions_total": "only when an intervention policy stops a generation",
    "corevital_capture_errors_total": "only when a capture kind fails",
    "corevital_warnings_total": "only when an early-warning detector fires",
    "corevital_compound_signals_total": "only when a compound signal shows",
    "corevital_baseline_divergence": "only with a calibrated baseline configured",
    "corevital_baseline_anomalous_steps_total": "only with a calibrated baseline configured",
    "corevital_baseline_spikes_total": "only when a generation jumps above the rolling baseline",
    "corevital_drift_events_total": "only when the drift rule fires",
    "corevital_device_memory_peak_bytes": "CUDA devices only",
    "corevital_probe_runs_total": "emitted by `corevital-otel probe`, not by generate()",
    "corevital_probe_duration_seconds": "emitted by `corevital-otel probe`, not by generate()",
    "corevital_probe_risk": "emitted by `corevital-otel probe`, not by generate()",
    "corevital_probe_entropy_bit": "emitted by `corevital-otel probe`, not by generate()",
}
# Every dashboard query that reads a PENDING metric: skipped (by name, with the reason) while it is absent.
EXPECTED_PENDING_QUERIES = {
    "corevital-overview/Health flags/A",
    "corevital-models/Models over the selected time range/J",
}
MODELS = ("gpt2", "llama")
CALLS_PER_ROUND = 2 * len(MODELS) + 1  # two per model, plus one that fails inside generate()


class FailingPlugin:
    """Fails in one phase of every generation, so corevital.plugin.errors has something to count."""

    COREVITAL_PLUGIN_NAME = "deliberately_failing"

    @hookimpl
    def corevital_summarize(self, info: Any, series: Any, results: Any) -> None:
        raise RuntimeError("deliberate failure for the backend tests")


# A declared cache budget, so the KV-cache metrics carry their budget/compression labels.
CACHE_CONTEXT = {"corevital.context.cache_budget": "256", "corevital.context.cache_compression": "none"}


def _generate_round(models: dict[str, torch.nn.Module]) -> None:
    ids, mask = prompt_batch(batch=2, length=6)
    for family, model in models.items():
        for new_tokens in (4, 7):
            with corevital_otel.context(attributes=CACHE_CONTEXT if new_tokens == 7 else None):
                model.generate(
                    ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0
                )
        if family == MODELS[0]:
            with pytest.raises(ValueError):  # an unknown generate() kwarg: error.type on the duration
                model.generate(ids, attention_mask=mask, max_new_tokens=2, not_a_generate_argument=1)


def _calls_seen(prometheus: LivePrometheus, at_least: int) -> None:
    prometheus.flush()
    prometheus.api.wait_for(
        "sum(gen_ai_client_operation_duration_seconds_count)",
        lambda result: bool(result) and float(result[0]["value"][1]) >= at_least,
        timeout=45,
    )


@pytest.fixture(scope="module", params=["sdk", "collector"])
def fed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LivePrometheus]:
    """Prometheus fed straight by the SDK's Prometheus reader, or through the built Collector."""
    tier = choose("Prometheus", "COREVITAL_TEST_PROMETHEUS_URL", ("prometheus",), IMAGE)
    collector = live_stack.require_collector() if request.param == "collector" else None
    with live_prometheus(tier, tmp_path_factory.mktemp("prometheus"), collector) as prometheus:
        corevital_otel.instrument(
            tracer_provider=TracerProvider(),
            meter_provider=prometheus.meter_provider,
            plugins=[FailingPlugin()],
        )
        try:
            models = {family: build_model(family) for family in MODELS}
            # Two rounds, each seen by Prometheus: rate() and increase() need a change between samples.
            for round_number in (1, 2):
                _generate_round(models)
                _calls_seen(prometheus, round_number * CALLS_PER_ROUND)
        finally:
            corevital_otel.uninstrument()
        yield prometheus


@pytest.fixture(scope="module")
def present(fed: LivePrometheus) -> set[str]:
    """Names of the series Prometheus holds."""
    return set(fed.api.get("/api/v1/label/__name__/values"))


def _series_metric(name: str) -> str:
    """The contract's Prometheus name behind a series name (a histogram's _bucket/_sum/_count)."""
    for metric in contract.metrics():
        if name in metric.series_names:
            return metric.prometheus_name
    return name


def _pending_names(query: promql.Query) -> set[str]:
    return {_series_metric(name) for name in promql.project_names(query.promql)} & set(PENDING)


def test_pending_queries_are_the_listed_ones() -> None:
    pending = {query.id for query in promql.dashboard_queries() if _pending_names(query)}
    assert pending == EXPECTED_PENDING_QUERIES
    assert len(pending) == 2


@pytest.mark.parametrize(
    "metric",
    [m for m in contract.metrics() if m.prometheus_name not in PENDING | NOT_PROVOKED.keys()],
    ids=lambda metric: metric.prometheus_name,
)
def test_emitted_metric_has_the_contract_name_and_labels(
    fed: LivePrometheus, present: set[str], metric: contract.ContractMetric
) -> None:
    assert set(metric.series_names) <= present, f"{metric.name}: {metric.series_names} not in Prometheus"
    series = fed.api.query(metric.series_names[-1])  # the counter itself, or a histogram's _count
    labels = set().union(*(set(sample["metric"]) for sample in series))
    assert set(metric.label_names) <= labels, f"{metric.name}: labels {sorted(labels)}"


@pytest.mark.parametrize("query", promql.dashboard_queries(), ids=lambda query: query.id)
def test_dashboard_query_returns_data(fed: LivePrometheus, present: set[str], query: promql.Query) -> None:
    absent = {
        name
        for name in promql.project_names(query.promql)
        if name.endswith(("_total", "_bucket", "_sum", "_count")) and name not in present
    }
    waiting = {_series_metric(name) for name in absent} & set(PENDING)
    if waiting:
        reasons = "; ".join(f"{name}: {PENDING[name]}" for name in sorted(waiting))
        pytest.skip(f"{query.id}: not emitted yet — {reasons}")
    unprovoked = {_series_metric(name) for name in absent}
    assert unprovoked <= NOT_PROVOKED.keys(), f"{query.id} reads series that do not exist: {sorted(absent)}"
    result = fed.api.query(query.promql)
    if absent:  # nothing these generations provoke: the panel must say 0, not "No data"
        assert [float(sample["value"][1]) for sample in result] == [0.0], f"{query.id}: {result}"
        return
    assert result, f"{query.id}: no data for {query.promql}"
    values = [float(sample["value"][1]) for sample in result]
    assert any(math.isfinite(value) for value in values), f"{query.id}: only {values}"
    grouped = promql.grouping_labels(query.expr) - ({"le"} if "histogram_quantile" in query.expr else set())
    for sample in result:
        assert grouped <= set(sample["metric"]), f"{query.id}: {sample['metric']} lacks {grouped}"


def test_model_variable_lists_the_models(fed: LivePrometheus) -> None:
    for path in promql.GRAFANA_DASHBOARDS:
        for variable in promql.load_dashboard(path)["templating"]["list"]:
            if variable["type"] != "query":
                continue
            metric, label = (
                part.strip() for part in variable["query"]["query"][len("label_values(") : -1].split(",")
            )
            values = fed.api.get(f"/api/v1/label/{label}/values", **{"match[]": metric})
            assert set(MODELS) <= set(values), f"{path.name} ${variable['name']}: {values}"


def test_shipped_alert_rules_load_in_prometheus(fed: LivePrometheus) -> None:
    if not fed.loads_shipped_rules:
        pytest.skip("a Prometheus named by COREVITAL_TEST_PROMETHEUS_URL runs its own rules")
    groups = fed.api.get("/api/v1/rules")["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    shipped = {rule["alert"] for rule in promql.prometheus_rules()}
    assert shipped <= loaded.keys()
    assert all(not loaded[name].get("lastError") for name in shipped)
