"""A real Prometheus for the live tier, fed by the OpenTelemetry SDK of the test process.

Local binary (Debian's 2.42 has no OTLP ingest): the SDK's Prometheus reader serves /metrics on a
loopback port that Prometheus, started by the test, scrapes every second; or the SDK pushes OTLP to the
built Collector (collector-config/config.yaml) and Prometheus scrapes the Collector's prometheus
exporter, as in the compose stack. A Prometheus named by
COREVITAL_TEST_PROMETHEUS_URL or started in a container receives the SDK's metrics over OTLP/HTTP
instead (its OTLP receiver must be on: `--web.enable-otlp-receiver` on 3.x,
`--enable-feature=otlp-write-receiver` on 2.47+).
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource

from .repo import COLLECTOR_BASE, PROMETHEUS, PROMETHEUS_RULES
from .tiers import Tier, free_port, stop, wait_http

SERVICE = "corevital-backend-tests"
IMAGE = "prom/prometheus:v2.53.0"


class PrometheusApi:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
            document = json.load(response)
        if document.get("status") != "success":
            raise AssertionError(f"{path} {params}: {document}")
        return document["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query at now: a list of {"metric": labels, "value": [time, "value"]}."""
        return self.get("/api/v1/query", query=expr)["result"]

    def wait_for(self, expr: str, ready: Callable[[list[dict[str, Any]]], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if ready(result):
                return
            time.sleep(0.25)
        raise AssertionError(f"{expr} not ready within {timeout:.0f}s; last result {result}")


@dataclass
class LivePrometheus:
    tier: Tier
    api: PrometheusApi
    meter_provider: MeterProvider
    loads_shipped_rules: bool

    def flush(self) -> None:
        """Push what the SDK holds (OTLP feed); a scrape feed is read when Prometheus scrapes."""
        self.meter_provider.force_flush()


def _resource() -> Resource:
    return Resource.create({"service.name": SERVICE})


@contextmanager
def _sdk_endpoint() -> Iterator[tuple[str, MeterProvider]]:
    """The SDK's Prometheus reader on a loopback port: (scrape target, meter provider)."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()  # not the global one: nothing else of this process is exposed
    reader = PrometheusMetricReader(registry=registry)
    server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    provider = MeterProvider(metric_readers=[reader], resource=_resource())
    try:
        yield f"127.0.0.1:{server.server_port}", provider
    finally:
        provider.shutdown()
        server.shutdown()
        server.server_close()


@contextmanager
def _collector_endpoint(collector_binary: Path, workdir: Path) -> Iterator[tuple[str, MeterProvider]]:
    """The built Collector (collector-config/config.yaml), fed over OTLP/HTTP: its prometheus exporter is
    the scrape target, as in the compose stack."""
    from .live_stack import collector

    with collector(collector_binary, [COLLECTOR_BASE], workdir) as running:
        provider = _otlp_provider(running.otlp_http, "/v1/metrics")
        try:
            yield running.prometheus.removeprefix("http://").removesuffix("/metrics"), provider
        finally:
            provider.shutdown()


@contextmanager
def _scraped_local(
    binary: str, workdir: Path, collector_binary: Path | None = None, rules: Path = PROMETHEUS_RULES
) -> Iterator[LivePrometheus]:
    """Prometheus started here, scraping every second the SDK's reader or, given ``collector_binary``,
    the Collector's prometheus exporter."""
    with ExitStack() as stack:
        if collector_binary is None:
            target, provider = stack.enter_context(_sdk_endpoint())
        else:
            target, provider = stack.enter_context(_collector_endpoint(collector_binary, workdir))
        port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            json.dumps(  # JSON is YAML
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(rules)],
                    "scrape_configs": [
                        {
                            "job_name": "corevital",
                            "honor_labels": True,
                            "static_configs": [{"targets": [target]}],
                        }
                    ],
                }
            )
        )
        log = workdir / "prometheus.log"
        with log.open("w") as log_file:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--enable-feature=exemplar-storage",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        stack.callback(stop, process)
        wait_http(f"http://127.0.0.1:{port}/-/ready", 30, process, log)
        yield LivePrometheus(Tier("local", binary), PrometheusApi(f"http://127.0.0.1:{port}"), provider, True)


def _otlp_provider(url: str, path: str = "/api/v1/otlp/v1/metrics") -> MeterProvider:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    exporter = OTLPMetricExporter(endpoint=f"{url.rstrip('/')}{path}")
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=1000)
    return MeterProvider(metric_readers=[reader], resource=_resource())


@contextmanager
def _named(url: str) -> Iterator[LivePrometheus]:
    provider = _otlp_provider(url)
    try:
        yield LivePrometheus(Tier("env", url), PrometheusApi(url), provider, False)
    finally:
        provider.shutdown()


@contextmanager
def _container(image: str) -> Iterator[LivePrometheus]:
    from testcontainers.core.container import DockerContainer

    container = (
        DockerContainer(image)
        .with_volume_mapping(str(PROMETHEUS), "/etc/prometheus/corevital", "ro")
        .with_command(
            "--config.file=/etc/prometheus/corevital/prometheus.yml "
            "--enable-feature=otlp-write-receiver,exemplar-storage --web.listen-address=:9090"
        )
        .with_exposed_ports(9090)
    )
    with ExitStack() as stack:
        stack.enter_context(container)
        url = f"http://{container.get_container_host_ip()}:{container.get_exposed_port(9090)}"
        wait_http(f"{url}/-/ready", 60)
        provider = _otlp_provider(url)
        stack.callback(provider.shutdown)
        yield LivePrometheus(Tier("container", image), PrometheusApi(url), provider, True)


def live_prometheus(
    tier: Tier, workdir: Path, collector_binary: Path | None = None, rules: Path = PROMETHEUS_RULES
) -> Any:
    """A context manager giving a LivePrometheus for ``tier``; with ``collector_binary``, fed through
    that Collector (local Prometheus only)."""
    if collector_binary is not None:
        if tier.kind != "local":
            pytest.skip("the Collector feed is tested with a local Prometheus binary")
        return _scraped_local(tier.target, workdir, collector_binary, rules)
    if tier.kind == "env":
        return _named(tier.target)
    if tier.kind == "local":
        return _scraped_local(tier.target, workdir, rules=rules)
    return _container(tier.target)
