"""Paths of the shipped files these tests check."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COLLECTOR = ROOT / "collector-config"
COLLECTOR_BASE = COLLECTOR / "config.yaml"
COLLECTOR_LANGFUSE = COLLECTOR / "langfuse.yaml"
COLLECTOR_MANIFEST = COLLECTOR / "builder-config.yaml"
COLLECTOR_AGENT = COLLECTOR / "gateway" / "agent.yaml"
COLLECTOR_SAMPLER = COLLECTOR / "gateway" / "sampler.yaml"
GRAFANA = ROOT / "dashboards" / "grafana"
GRAFANA_DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
GRAFANA_PROVISIONING = GRAFANA / "provisioning"
GRAFANA_ALERTS = GRAFANA_PROVISIONING / "alerting" / "corevital-alerts.yaml"
PROMETHEUS = ROOT / "dashboards" / "prometheus"
PROMETHEUS_RULES = PROMETHEUS / "corevital-alerts.yaml"
PROMETHEUS_RULE_TESTS = PROMETHEUS / "corevital-alerts.test.yaml"
PROMETHEUS_CONFIG = PROMETHEUS / "prometheus.yml"
LANGFUSE_DASHBOARDS = ROOT / "dashboards" / "langfuse" / "corevital-dashboards.json"
COMPOSE = ROOT / "deploy" / "compose.yaml"
COMPOSE_LANGFUSE = ROOT / "deploy" / "compose.langfuse.yaml"
TELEMETRY_DOC = ROOT / "docs" / "telemetry.md"
STACK_DOC = ROOT / "docs" / "observability-stack.md"
