"""The Go-built Collector and Jaeger, started by a test on loopback with free ports and the shipped
configuration (collector-config/, deploy/jaeger.yaml), every address given through the environment
variables the configs read. Stopped when the test is done."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from google.protobuf.json_format import ParseDict
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData
from prometheus_client.parser import text_string_to_metric_families

from . import go_backends, otlp
from .repo import ROOT
from .tiers import free_port, stop, wait_http

JAEGER_CONFIG = ROOT / "deploy" / "jaeger.yaml"


def scrape(url: str, **only: str) -> dict[str, float]:
    """Prometheus text at ``url`` -> sample name -> the sum over its label sets, leaving out samples whose
    label named in ``only`` has another value (``exporter="otlp_grpc/jaeger"``: not the debug exporter's)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if all(sample.labels.get(label, value) == value for label, value in only.items()):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


@contextmanager
def _process(
    command: list[str], environment: dict[str, str], ready_url: str, log: Path
) -> Iterator[subprocess.Popen]:
    with log.open("w") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, **environment}, cwd=ROOT
        )
    try:
        wait_http(ready_url, 60, process, log)
        yield process
    finally:
        stop(process)


@dataclass(frozen=True)
class RunningCollector:
    otlp_grpc: str  # host:port
    otlp_http: str  # base URL
    prometheus: str  # the prometheus exporter's /metrics
    telemetry: str  # the Collector's own /metrics
    log: Path
    pid: int

    def own_metrics(self, **only: str) -> dict[str, float]:
        """The Collector's own counters, summed (see scrape for ``only``)."""
        return scrape(self.telemetry, **only)

    def peak_rss_mib(self) -> float:
        """The process' peak resident memory so far (VmHWM)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError(f"no VmHWM for process {self.pid}")


@contextmanager
def collector(
    binary: Path | str, configs: Sequence[Path], workdir: Path, environment: dict[str, str] | None = None
) -> Iterator[RunningCollector]:
    """``binary --config=...`` for each file, listening on free loopback ports."""
    grpc, http, health, prometheus, telemetry = (free_port() for _ in range(5))
    env = {
        "COREVITAL_COLLECTOR_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{grpc}",
        "COREVITAL_COLLECTOR_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{http}",
        "COREVITAL_COLLECTOR_HEALTH_ENDPOINT": f"127.0.0.1:{health}",
        "COREVITAL_COLLECTOR_PROMETHEUS_ENDPOINT": f"127.0.0.1:{prometheus}",
        "COREVITAL_COLLECTOR_TELEMETRY_HOST": "127.0.0.1",
        "COREVITAL_COLLECTOR_TELEMETRY_PORT": str(telemetry),
        "JAEGER_OTLP_GRPC_ENDPOINT": "127.0.0.1:9",  # discard port: overridden when a Jaeger runs
        **(environment or {}),
    }
    log = workdir / f"collector-{grpc}.log"
    command = [str(binary), *(f"--config={path}" for path in configs)]
    with _process(command, env, f"http://127.0.0.1:{health}/", log) as process:
        yield RunningCollector(
            f"127.0.0.1:{grpc}",
            f"http://127.0.0.1:{http}",
            f"http://127.0.0.1:{prometheus}/metrics",
            f"http://127.0.0.1:{telemetry}/metrics",
            log,
            process.pid,
        )


@dataclass(frozen=True)
class RunningJaeger:
    query: str  # base URL of the query APIs
    otlp_grpc: str  # host:port
    otlp_http: str  # base URL
    telemetry: str  # Jaeger's own /metrics
    log: Path

    def services(self) -> list[str]:
        return _get_json(f"{self.query}/api/v3/services").get("services") or []

    def traces(
        self, service: str, limit: int = 1000, since: timedelta = timedelta(hours=1)
    ) -> list[otlp.ExportedSpan]:
        """Every span of the service's traces started in the last ``since`` (/api/v3/traces)."""
        now = datetime.now(UTC)
        params = {
            "query.service_name": service,
            "query.start_time_min": (now - since).isoformat().replace("+00:00", "Z"),
            "query.start_time_max": (now + timedelta(minutes=1)).isoformat().replace("+00:00", "Z"),
            "query.num_traces": str(limit),
        }
        return _spans_or_none(f"{self.query}/api/v3/traces?{urllib.parse.urlencode(params)}")

    def trace(self, trace_id: str) -> list[otlp.ExportedSpan]:
        """The spans of one trace (hex id); empty when Jaeger has none."""
        return _spans_or_none(f"{self.query}/api/v3/traces/{trace_id}")

    def has_trace(self, trace_id: str, span_name: str) -> bool:
        """Whether Jaeger returns the trace with a span of that name; reads the answer without decoding
        it (a long generation's trace is ~1 MB of JSON)."""
        try:
            with urllib.request.urlopen(f"{self.query}/api/v3/traces/{trace_id}", timeout=60) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return False
            raise
        return f'"traceId":"{trace_id}"'.encode() in body and f'"name":"{span_name}"'.encode() in body


def _spans_or_none(url: str) -> list[otlp.ExportedSpan]:
    """The spans of an /api/v3/traces answer; Jaeger answers 404 when it found no trace."""
    try:
        return _spans(_get_json(url))
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return []
        raise


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.load(response)


def _hex_ids(node: Any) -> Any:
    """Jaeger's OTLP JSON writes ids in hex; protobuf's JSON mapping expects base64 bytes."""
    if isinstance(node, dict):
        return {
            key: (
                _base64(value)
                if key in ("traceId", "spanId", "parentSpanId") and isinstance(value, str)
                else _hex_ids(value)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_hex_ids(item) for item in node]
    return node


def _base64(hex_id: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_id)).decode()


def _spans(document: dict[str, Any]) -> list[otlp.ExportedSpan]:
    """The spans of an /api/v3/traces answer ({"result": {"resourceSpans": [...]}})."""
    data = ParseDict(_hex_ids(document.get("result") or {}), TracesData(), ignore_unknown_fields=True)
    return otlp.spans_of(data.resource_spans)


@contextmanager
def jaeger(binary: Path | str, workdir: Path, otlp_grpc_port: int | None = None) -> Iterator[RunningJaeger]:
    """Jaeger v2 with deploy/jaeger.yaml on free loopback ports (its OTLP gRPC one may be given)."""
    query, query_grpc, grpc, http, telemetry = (free_port() for _ in range(5))
    grpc = otlp_grpc_port or grpc
    env = {
        "JAEGER_QUERY_HTTP_ENDPOINT": f"127.0.0.1:{query}",
        "JAEGER_QUERY_GRPC_ENDPOINT": f"127.0.0.1:{query_grpc}",
        "JAEGER_OTLP_GRPC_LISTEN": f"127.0.0.1:{grpc}",
        "JAEGER_OTLP_HTTP_LISTEN": f"127.0.0.1:{http}",
        "JAEGER_TELEMETRY_HOST": "127.0.0.1",
        "JAEGER_TELEMETRY_PORT": str(telemetry),
    }
    log = workdir / "jaeger.log"
    base = f"http://127.0.0.1:{query}"
    with _process([str(binary), f"--config={JAEGER_CONFIG}"], env, f"{base}/api/v3/services", log):
        yield RunningJaeger(
            base,
            f"127.0.0.1:{grpc}",
            f"http://127.0.0.1:{http}",
            f"http://127.0.0.1:{telemetry}/metrics",
            log,
        )


def load_generator() -> ModuleType:
    """deploy/otlp_load.py, the bounded loopback load generator, as a module."""
    spec = importlib.util.spec_from_file_location("otlp_load", ROOT / "deploy" / "otlp_load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def require_collector() -> Path:
    """The built Collector (or COREVITAL_TEST_OTELCOL's), else the calling test skips saying why."""
    return _require("COREVITAL_TEST_OTELCOL", go_backends.collector())


def require_jaeger() -> Path:
    """The built Jaeger (or COREVITAL_TEST_JAEGER's), else the calling test skips saying why."""
    return _require("COREVITAL_TEST_JAEGER", go_backends.jaeger())


def _require(env_var: str, built: go_backends.Built) -> Path:
    if os.environ.get(env_var):
        return Path(os.environ[env_var])
    if built.path is None:
        pytest.skip(f"{built.problem} (or set {env_var} to a binary)")
    return built.path
