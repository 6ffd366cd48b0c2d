"""The Grafana dashboards: valid for the pinned Grafana line (round trip through grafana-foundation-sdk
without an unknown key), laid out sanely, filtered by the model variable, linked to traces by exemplars,
and provisioned with the data sources they name."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from . import contract, grafana, promql
from .repo import COMPOSE, GRAFANA_DASHBOARDS, GRAFANA_PROVISIONING

DATASOURCE_VARIABLE = {"type": "prometheus", "uid": "${datasource}"}
PROMETHEUS_UID = "corevital-prometheus"
dashboards = pytest.mark.parametrize("path", GRAFANA_DASHBOARDS, ids=lambda path: path.stem)


def test_both_dashboards_ship() -> None:
    assert {path.stem for path in GRAFANA_DASHBOARDS} == {"corevital-overview", "corevital-models"}
    uids = [promql.load_dashboard(path)["uid"] for path in GRAFANA_DASHBOARDS]
    assert len(set(uids)) == len(uids)


@dashboards
def test_round_trips_through_the_sdk_without_unknown_keys(path: Path) -> None:
    dashboard = promql.load_dashboard(path)
    for panel in promql.panels(dashboard):
        if panel["type"] != "row":  # otherwise options would pass through untyped, unchecked
            assert grafana.knows_panel_type(panel["type"]), panel["type"]
            assert grafana.knows_datasource_type(panel["datasource"]["type"]), panel["datasource"]
    assert grafana.lost_keys(dashboard, grafana.round_trip(dashboard)) == []


def test_the_round_trip_check_catches_unknown_keys() -> None:
    dashboard = copy.deepcopy(promql.load_dashboard(GRAFANA_DASHBOARDS[0]))
    panel = next(p for p in promql.panels(dashboard) if p["type"] == "timeseries")
    panel["options"]["legend"]["placment"] = "bottom"
    panel["targets"][0]["exemplars"] = True
    assert len(grafana.lost_keys(dashboard, grafana.round_trip(dashboard))) == 2


def test_sdk_is_pinned_to_the_grafana_line_compose_runs() -> None:
    image = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]["image"]
    assert image.split(":")[1].startswith(f"{grafana.sdk_grafana_line()}.")


@dashboards
def test_layout(path: Path) -> None:
    dashboard = promql.load_dashboard(path)
    ids, cells = set(), set()
    for panel in promql.panels(dashboard):
        assert panel["id"] not in ids, f"duplicate panel id {panel['id']}"
        ids.add(panel["id"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        covered = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered


@dashboards
def test_every_query_uses_the_variables(path: Path) -> None:
    dashboard = promql.load_dashboard(path)
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["current"]["value"] == PROMETHEUS_UID
    assert variables["model"]["includeAll"] and variables["model"]["allValue"] == ".*"
    for panel in promql.panels(dashboard):
        for target in panel.get("targets", []):
            assert panel["datasource"] == target["datasource"] == DATASOURCE_VARIABLE, panel["title"]
            # every metric selector of the expression is filtered by the model variable
            selectors = re.findall(r"\b(?:gen_ai|corevital)_\w+\{([^}]*)\}", target["expr"])
            assert selectors and all('gen_ai_request_model=~"$model"' in s for s in selectors), panel["title"]


@dashboards
def test_graphs_link_to_traces_through_exemplars(path: Path) -> None:
    for panel in promql.panels(promql.load_dashboard(path)):
        if panel["type"] in ("timeseries", "heatmap"):
            assert all(target.get("exemplar") is True for target in panel["targets"]), panel["title"]


def test_overview_has_the_promised_panels() -> None:
    overview = promql.load_dashboard(next(p for p in GRAFANA_DASHBOARDS if p.stem == "corevital-overview"))
    titles = {panel["title"] for panel in promql.panels(overview)}
    assert {
        "Generations/s",
        "Tokens/s",
        "generate() duration",
        "Time to first token",
        "Risk score distribution",
        "High-risk share by model",
        "Health flags",
        "Token entropy distribution",
        "Token surprisal distribution",
        "Interventions",
        "Plugin errors",
    } <= titles


def _provisioning(name: str) -> dict:
    return yaml.safe_load((GRAFANA_PROVISIONING / name).read_text())


def test_datasources_are_provisioned_with_the_uids_the_dashboards_and_alerts_use() -> None:
    document = _provisioning("datasources/corevital.yaml")
    assert document["apiVersion"] == 1
    sources = {source["uid"]: source for source in document["datasources"]}
    assert sources[PROMETHEUS_UID]["type"] == "prometheus"
    destinations = sources[PROMETHEUS_UID]["jsonData"]["exemplarTraceIdDestinations"]
    # exemplar label trace_id (what the Collector's prometheus exporter writes) opens the trace in Jaeger
    assert [(d["name"], sources[d["datasourceUid"]]["type"]) for d in destinations] == [
        ("trace_id", "jaeger")
    ]


def test_provisioning_reads_only_variables_compose_sets() -> None:
    environment = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]["environment"]
    for path in GRAFANA_PROVISIONING.rglob("*.yaml"):
        for name in re.findall(r"\$\{(\w+)\}", path.read_text()):
            assert name in environment, f"{path.name} reads ${name}, which compose does not set"


def test_dashboard_provider_is_file_based() -> None:
    provider = _provisioning("dashboards/corevital.yaml")["providers"][0]
    assert provider["type"] == "file" and provider["folderUid"] == "corevital"


# Emitted metric families no dashboard shows, each with the reason; everything else is on a dashboard.
NOT_ON_A_DASHBOARD = {
    "corevital_device_memory_peak_bytes": "CUDA devices only; the KV-cache panels show memory everywhere",
    "corevital_baseline_divergence": "only with a calibrated baseline file; read per generation on the span",
    "corevital_baseline_anomalous_steps_total": "only with a calibrated baseline file",
    "corevital_probe_runs_total": "the canary command's own metrics (docs/probe.md), not generate()'s",
    "corevital_probe_duration_seconds": "the canary command's own metrics",
    "corevital_probe_risk": "the canary command's own metrics",
    "corevital_probe_entropy_bit": "the canary command's own metrics",
}
# Counters of events that healthy traffic may never produce: their panels show 0, not "No data".
EVENT_COUNTERS = {
    "corevital_interventions_total",
    "corevital_plugin_errors_total",
    "corevital_capture_errors_total",
    "corevital_warnings_total",
    "corevital_compound_signals_total",
    "corevital_drift_events_total",
    "corevital_baseline_spikes_total",
}
ZERO_FALLBACK = "or on() vector(0)"


def test_every_emitted_metric_family_is_on_a_dashboard() -> None:
    shown = set().union(*(promql.project_names(query.expr) for query in promql.dashboard_queries()))
    for metric in contract.metrics():
        on_a_dashboard = bool(set(metric.series_names) & shown)
        if metric.prometheus_name in NOT_ON_A_DASHBOARD:
            assert not on_a_dashboard, f"{metric.prometheus_name} is shown now: drop it from the list"
        else:
            assert on_a_dashboard, f"{metric.prometheus_name} appears on no dashboard"


def test_event_counters_show_zero_rather_than_no_data() -> None:
    for query in promql.dashboard_queries():
        counted = promql.project_names(query.expr) & EVENT_COUNTERS
        if counted:
            assert promql.normalize(query.expr).endswith(promql.normalize(ZERO_FALLBACK)), query.id


def _units(dashboard: dict) -> dict[str, str]:
    return {
        p["title"]: p.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        for p in promql.panels(dashboard)
    }


def test_units_say_what_the_values_are() -> None:
    overview, models = (
        promql.load_dashboard(next(p for p in GRAFANA_DASHBOARDS if p.stem == stem))
        for stem in ("corevital-overview", "corevital-models")
    )
    table = next(p for p in promql.panels(models) if p["type"] == "table")
    overrides = {
        o["matcher"]["options"]: {prop["id"]: prop["value"] for prop in o["properties"]}
        for o in table["fieldConfig"]["overrides"]
    }
    # a count per generation (1.52 flags) is not a share: no percent
    assert overrides["health flags per generation"]["unit"] == "none"
    assert overrides["high-risk share"]["unit"] == "percentunit"
    assert overrides["mean entropy"]["unit"] == overrides["mean surprisal"]["unit"] == "suffix: bit"
    assert _units(models)["Mean token entropy by model"] == "suffix: bit"
    assert _units(overview)["KV cache memory (p95)"] == "bytes"
    for panel in promql.panels(overview):
        if panel["type"] == "heatmap" and "bit" in panel["targets"][0]["expr"]:
            assert panel["options"]["yAxis"]["unit"] == "suffix: bit", panel["title"]
