"""Live tier: SDK -> the built Collector -> its prometheus exporter -> Debian's Prometheus scraping it ->
the shipped risk alert. The embedded demo model generates under two names: its looping prompts as
`demo-looping`, its healthy prompt as `demo-healthy`. CoreVitalHighRiskShare must fire for the first and
stay inactive for the second.

The rule is the shipped one (same expression, same threshold); only its timing is shortened to fit a test:
evaluated every second instead of every minute, `for: 2s` instead of 5m (its 15-minute window already
holds the whole test)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.sdk.trace import TracerProvider

import corevital_otel
from corevital_otel.demo_model import DEMO_MODEL_DIR
from corevital_otel.report.generations import load_local_model

from . import live_stack
from .prometheus_backend import IMAGE, LivePrometheus, live_prometheus
from .repo import PROMETHEUS_RULES
from .tiers import choose

ALERT = "CoreVitalHighRiskShare"
LOOPING_PROMPTS = ("import os\nimport sys\n", "    return self._")  # the demo's looping prompts
HEALTHY_PROMPT = "    def __repr__(self):\n        return '<%s %r>' % (self.__class__.__name__, "
GENERATIONS = 12  # per model: the rule counts a model only from 10 generations in its window


def shortened_rules(workdir: Path) -> Path:
    """The shipped rule file with the risk alert's group evaluated every second and `for: 2s`."""
    document = yaml.safe_load(PROMETHEUS_RULES.read_text())
    for group in document["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if rule.get("alert") == ALERT:
                rule["for"] = "2s"
    path = workdir / "corevital-alerts.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def _generate(prometheus: LivePrometheus) -> None:
    """One generation per model, seen by Prometheus, then GENERATIONS more: increase() needs the counter
    at a value before the traffic (a series that appears already at its final value increases by 0)."""
    traffic = {"demo-looping": LOOPING_PROMPTS, "demo-healthy": (HEALTHY_PROMPT,)}
    models = {name: load_local_model(DEMO_MODEL_DIR, display_name=name) for name in traffic}
    corevital_otel.instrument(tracer_provider=TracerProvider(), meter_provider=prometheus.meter_provider)
    try:
        for count in (1, GENERATIONS):
            for name, prompts in traffic.items():
                model, tokenizer = models[name]
                for index in range(count):
                    inputs = tokenizer(prompts[index % len(prompts)], return_tensors="pt")
                    model.generate(**inputs, max_new_tokens=48, do_sample=False)
            prometheus.flush()
            if count == 1:
                prometheus.api.wait_for(
                    "count by (gen_ai_request_model) (corevital_generations_total)",
                    lambda result: len(result) == len(traffic),
                    timeout=60,
                )
    finally:
        corevital_otel.uninstrument()


@pytest.fixture(scope="module")
def alerting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LivePrometheus]:
    tier = choose("Prometheus", "COREVITAL_TEST_PROMETHEUS_URL", ("prometheus",), IMAGE)
    collector = live_stack.require_collector()
    workdir = tmp_path_factory.mktemp("alerts")
    with live_prometheus(tier, workdir, collector, shortened_rules(workdir)) as prometheus:
        _generate(prometheus)
        yield prometheus


def _alerts(prometheus: LivePrometheus) -> list[dict[str, Any]]:
    return [
        alert
        for alert in prometheus.api.get("/api/v1/alerts")["alerts"]
        if alert["labels"]["alertname"] == ALERT
    ]


def test_the_shortened_rule_is_the_shipped_rule(tmp_path: Path) -> None:
    def risk_rule(path: Path) -> dict[str, Any]:
        groups = yaml.safe_load(path.read_text())["groups"]
        return next(rule for group in groups for rule in group["rules"] if rule.get("alert") == ALERT)

    shipped, shortened = risk_rule(PROMETHEUS_RULES), risk_rule(shortened_rules(tmp_path))
    assert {**shortened, "for": shipped["for"]} == shipped


def test_the_risk_alert_fires_on_looping_traffic_only(alerting: LivePrometheus) -> None:
    deadline = time.monotonic() + 90
    firing: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        firing = [alert for alert in _alerts(alerting) if alert["state"] == "firing"]
        if firing:
            break
        time.sleep(1)
    high = 'corevital_generations_total{corevital_risk_level="high"}'
    share = alerting.api.query(
        f"sum by (gen_ai_request_model) (increase({high}[15m]))"
        " / sum by (gen_ai_request_model) (increase(corevital_generations_total[15m]))"
    )
    assert [alert["labels"]["gen_ai_request_model"] for alert in firing] == ["demo-looping"], share
    time.sleep(3)  # longer than `for`: a healthy alert would be pending or firing by now
    models = {alert["labels"]["gen_ai_request_model"] for alert in _alerts(alerting)}
    assert models == {"demo-looping"}, share
