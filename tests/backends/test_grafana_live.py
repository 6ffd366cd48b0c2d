"""Live tier: a real Grafana started with dashboards/grafana/provisioning loads the data sources, both
dashboards and the alert rules exactly as shipped."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from . import promql
from .repo import GRAFANA, GRAFANA_DASHBOARDS, GRAFANA_PROVISIONING
from .tiers import Tier, choose, free_port, stop, wait_http

IMAGE = "grafana/grafana:11.6.0"
DASHBOARDS_DIR = "/var/lib/grafana/dashboards/corevital"
# What the compose file sets; the data sources need not answer for provisioning to load.
ENVIRONMENT = {
    "COREVITAL_PROMETHEUS_URL": "http://127.0.0.1:9",
    "COREVITAL_JAEGER_URL": "http://127.0.0.1:9",
    "GF_SECURITY_ADMIN_PASSWORD": "admin",
}


@contextmanager
def _grafana(tier: Tier, workdir: Path) -> Iterator[tuple[str, str]]:
    """(base URL, user:password) of a Grafana provisioned with the shipped files."""
    if tier.kind == "env":
        yield tier.target.rstrip("/"), os.environ.get("COREVITAL_TEST_GRAFANA_AUTH", "admin:admin")
    elif tier.kind == "local":
        port = free_port()
        home = next(
            (p for p in ("/usr/share/grafana", "/opt/grafana") if Path(p).is_dir()), "/usr/share/grafana"
        )
        command = [tier.target, "server"] if Path(tier.target).name == "grafana" else [tier.target]
        environment = {
            **os.environ,
            **ENVIRONMENT,
            "COREVITAL_GRAFANA_DASHBOARDS_DIR": str(GRAFANA / "dashboards"),
            "GF_PATHS_PROVISIONING": str(GRAFANA_PROVISIONING),
            "GF_PATHS_DATA": str(workdir / "data"),
            "GF_PATHS_LOGS": str(workdir / "logs"),
            "GF_SERVER_HTTP_ADDR": "127.0.0.1",
            "GF_SERVER_HTTP_PORT": str(port),
        }
        log = workdir / "grafana.log"
        with log.open("w") as output:
            process = subprocess.Popen(
                [*command, "--homepath", home], env=environment, stdout=output, stderr=subprocess.STDOUT
            )
        try:
            wait_http(f"http://127.0.0.1:{port}/api/health", 90, process, log)
            yield f"http://127.0.0.1:{port}", "admin:admin"
        finally:
            stop(process)
    else:
        from testcontainers.core.container import DockerContainer

        container = (
            DockerContainer(tier.target)
            .with_volume_mapping(str(GRAFANA_PROVISIONING), "/etc/grafana/provisioning", "ro")
            .with_volume_mapping(str(GRAFANA / "dashboards"), DASHBOARDS_DIR, "ro")
            .with_exposed_ports(3000)
        )
        for name, value in {**ENVIRONMENT, "COREVITAL_GRAFANA_DASHBOARDS_DIR": DASHBOARDS_DIR}.items():
            container = container.with_env(name, value)
        with container:
            url = f"http://{container.get_container_host_ip()}:{container.get_exposed_port(3000)}"
            wait_http(f"{url}/api/health", 120)
            yield url, "admin:admin"


@pytest.fixture(scope="module")
def grafana(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tier = choose("Grafana", "COREVITAL_TEST_GRAFANA_URL", ("grafana", "grafana-server"), IMAGE)
    with _grafana(tier, tmp_path_factory.mktemp("grafana")) as (url, credentials):
        token = base64.b64encode(credentials.encode()).decode()

        def get(path: str) -> Any:
            request = urllib.request.Request(f"{url}{path}", headers={"Authorization": f"Basic {token}"})
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.load(response)

        yield get


def test_data_sources_are_provisioned(grafana: Any) -> None:
    assert grafana("/api/datasources/uid/corevital-prometheus")["type"] == "prometheus"
    assert grafana("/api/datasources/uid/corevital-jaeger")["type"] == "jaeger"


@pytest.mark.parametrize("path", GRAFANA_DASHBOARDS, ids=lambda path: path.stem)
def test_dashboard_is_provisioned_as_shipped(grafana: Any, path: Path) -> None:
    shipped = promql.load_dashboard(path)
    loaded = grafana(f"/api/dashboards/uid/{shipped['uid']}")["dashboard"]
    assert [p["title"] for p in promql.panels(loaded)] == [p["title"] for p in promql.panels(shipped)]
    expressions = [t.get("expr") for p in promql.panels(loaded) for t in p.get("targets", [])]
    assert expressions == [t.get("expr") for p in promql.panels(shipped) for t in p.get("targets", [])]


def test_alert_rules_are_provisioned(grafana: Any) -> None:
    loaded = {rule["uid"] for rule in grafana("/api/v1/provisioning/alert-rules")}
    assert {rule["uid"] for rule in promql.grafana_alert_rules()} <= loaded
