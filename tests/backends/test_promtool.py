"""promtool (Debian's prometheus package) checks every PromQL expression the project ships, and runs the
alert rules' unit tests; the unit tests are shown to fail on a broken rule."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from . import promql
from .conftest import run_promtool
from .repo import PROMETHEUS_CONFIG, PROMETHEUS_RULE_TESTS, PROMETHEUS_RULES


def _as_recording_rules(queries: list[promql.Query]) -> dict:
    # promtool has no "parse this expression"; a recording rule per expression gets it parsed and checked.
    rules = [
        {"record": f"corevital:check:{index}", "expr": query.promql} for index, query in enumerate(queries)
    ]
    return {"groups": [{"name": "shipped-expressions", "rules": rules}]}


def test_every_shipped_expression_parses(promtool: str, tmp_path: Path) -> None:
    queries = promql.dashboard_queries() + promql.grafana_alert_queries()
    assert len(queries) >= 30
    rules = tmp_path / "expressions.yaml"
    rules.write_text(yaml.safe_dump(_as_recording_rules(queries)))
    result = run_promtool(promtool, "check", "rules", str(rules))
    if result.returncode != 0:
        indexes = [int(i) for i in re.findall(r"corevital:check:(\d+)", result.stdout + result.stderr)]
        failing = [queries[i].id for i in indexes] or "see output"
        pytest.fail(f"promtool rejected {failing}:\n{result.stdout}{result.stderr}")
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_a_broken_expression_is_rejected(promtool: str, tmp_path: Path) -> None:
    broken = promql.Query(
        "dashboard", "broken", "sum by (le (rate(gen_ai_client_token_usage_bucket[$__rate_interval]))"
    )
    rules = tmp_path / "broken.yaml"
    rules.write_text(yaml.safe_dump(_as_recording_rules([broken])))
    assert run_promtool(promtool, "check", "rules", str(rules)).returncode != 0


def test_prometheus_rules_and_config_are_valid(promtool: str) -> None:
    rules = run_promtool(promtool, "check", "rules", str(PROMETHEUS_RULES))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    for path in (PROMETHEUS_CONFIG, PROMETHEUS_CONFIG.with_name("prometheus-direct.yml")):
        config = run_promtool(promtool, "check", "config", str(path))
        assert config.returncode == 0, config.stdout + config.stderr


def test_alert_rule_unit_tests_pass(promtool: str) -> None:
    result = run_promtool(
        promtool, "test", "rules", PROMETHEUS_RULE_TESTS.name, cwd=PROMETHEUS_RULE_TESTS.parent
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tests = yaml.safe_load(PROMETHEUS_RULE_TESTS.read_text())["tests"]
    checks = [check for test in tests for check in test["alert_rule_test"]]
    alerts = {rule["alert"] for rule in promql.prometheus_rules()}
    # every alert is tested both firing and not firing
    assert {check["alertname"] for check in checks if check["exp_alerts"]} == alerts
    assert {check["alertname"] for check in checks if not check["exp_alerts"]} == alerts


@pytest.mark.parametrize(
    ("old", "new"), [("> 0.2", "> 0.9"), ("for: 10m", "for: 40m"), ('=~"nan_detected|', '=~"')]
)
def test_unit_tests_catch_a_changed_rule(promtool: str, tmp_path: Path, old: str, new: str) -> None:
    text = PROMETHEUS_RULES.read_text()
    assert old in text
    (tmp_path / PROMETHEUS_RULES.name).write_text(text.replace(old, new, 1))
    (tmp_path / PROMETHEUS_RULE_TESTS.name).write_text(PROMETHEUS_RULE_TESTS.read_text())
    result = run_promtool(promtool, "test", "rules", PROMETHEUS_RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0, f"the unit tests did not notice {old!r} -> {new!r}"
