"""Grafana alert rules (file provisioning, apiVersion 1): well formed, on the provisioned Prometheus, and
the same rules as the Prometheus rule file (query, threshold, duration, severity)."""

from __future__ import annotations

import re

import pytest
import yaml

from . import promql
from .repo import GRAFANA_ALERTS

_COMPARISON = re.compile(r"^\((?P<query>.*)\)\s*(?P<op>>|<)\s*(?P<threshold>[0-9.]+)$")
_EVALUATORS = {">": "gt", "<": "lt"}


def test_file_provisioning_format() -> None:
    document = yaml.safe_load(GRAFANA_ALERTS.read_text())
    assert document["apiVersion"] == 1
    for group in document["groups"]:
        assert {"orgId", "name", "folder", "interval", "rules"} <= group.keys()
        for rule in group["rules"]:
            assert {"uid", "title", "condition", "data", "for", "labels", "annotations"} <= rule.keys()
            assert rule["noDataState"] in ("OK", "NoData", "Alerting")
            assert rule["execErrState"] in ("OK", "Error", "Alerting")
            refs = {data["refId"]: data for data in rule["data"]}
            assert rule["condition"] in refs
            condition = refs[rule["condition"]]
            assert condition["datasourceUid"] == "__expr__" and condition["model"]["type"] == "threshold"
            assert condition["model"]["expression"] in refs
            queries = [data for data in rule["data"] if data["datasourceUid"] != "__expr__"]
            assert [q["datasourceUid"] for q in queries] == ["corevital-prometheus"]
            assert queries[0]["model"]["instant"] is True


def _grafana_rules() -> dict[str, dict]:
    return {rule["title"]: rule for rule in promql.grafana_alert_rules()}


@pytest.mark.parametrize("rule", promql.prometheus_rules(), ids=lambda rule: rule["alert"])
def test_grafana_rule_equals_the_prometheus_rule(rule: dict) -> None:
    grafana = _grafana_rules()[rule["alert"]]
    match = _COMPARISON.match(promql.normalize(rule["expr"]))
    assert match, f"{rule['alert']}: write the expr as (query) > threshold"
    data = {item["refId"]: item for item in grafana["data"]}
    condition = data[grafana["condition"]]["model"]
    query = data[condition["expression"]]["model"]["expr"]
    assert promql.normalize(query) == match["query"]
    evaluator = condition["conditions"][0]["evaluator"]
    assert evaluator["type"] == _EVALUATORS[match["op"]]
    assert evaluator["params"] == [float(match["threshold"])]
    assert grafana["for"] == rule["for"]
    assert grafana["labels"]["severity"] == rule["labels"]["severity"]


def test_same_alerts_in_both_files() -> None:
    assert _grafana_rules().keys() == {rule["alert"] for rule in promql.prometheus_rules()}
