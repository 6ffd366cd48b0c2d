"""The Collector config's structure, checked where no collector binary runs: every pipeline component is
defined and built into the manifest's distribution (and nothing more), the pipelines protect themselves,
and every secret and setting comes from a documented environment variable."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import yaml

from . import collector
from .repo import COLLECTOR_BASE, COLLECTOR_LANGFUSE, COLLECTOR_MANIFEST, COMPOSE, STACK_DOC

# Component type -> the Go module that provides it (what the manifest must list).
MODULES = {
    ("receivers", "otlp"): "go.opentelemetry.io/collector/receiver/otlpreceiver",
    ("processors", "memory_limiter"): "go.opentelemetry.io/collector/processor/memorylimiterprocessor",
    (
        "processors",
        "tail_sampling",
    ): "github.com/open-telemetry/opentelemetry-collector-contrib/processor/tailsamplingprocessor",
    ("exporters", "otlp_grpc"): "go.opentelemetry.io/collector/exporter/otlpexporter",
    ("exporters", "otlp_http"): "go.opentelemetry.io/collector/exporter/otlphttpexporter",
    (
        "exporters",
        "load_balancing",
    ): "github.com/open-telemetry/opentelemetry-collector-contrib/exporter/loadbalancingexporter",
    ("exporters", "debug"): "go.opentelemetry.io/collector/exporter/debugexporter",
    (
        "exporters",
        "prometheus",
    ): "github.com/open-telemetry/opentelemetry-collector-contrib/exporter/prometheusexporter",
    (
        "extensions",
        "health_check",
    ): "github.com/open-telemetry/opentelemetry-collector-contrib/extension/healthcheckextension",
    (
        "extensions",
        "basicauth",
    ): "github.com/open-telemetry/opentelemetry-collector-contrib/extension/basicauthextension",
}
PUSH_EXPORTERS = ("otlp_grpc", "otlp_http")
# The most one export request may carry (bytes), per exporter: under the receiver's limit. gRPC's
# default receive limit is 4 MiB (Jaeger's OTLP receiver, our samplers'); Langfuse gets smaller requests.
REQUEST_LIMITS = {"otlp_grpc": 4 * 2**20, "otlp_http": 4 * 2**20, "load_balancing": 4 * 2**20}
combinations = pytest.mark.parametrize(
    "files", collector.COMBINATIONS.values(), ids=collector.COMBINATIONS.keys()
)


def _pipelines(config: dict) -> dict:
    return config["service"]["pipelines"]


@combinations
def test_every_pipeline_component_is_defined_and_every_defined_one_used(files) -> None:
    config = collector.load(*files)
    used: dict[str, set[str]] = {section: set() for section in collector.SECTIONS}
    for name, pipeline in _pipelines(config).items():
        for section in ("receivers", "processors", "exporters"):
            for component in pipeline.get(section, []):
                assert component in config.get(section, {}), (
                    f"pipeline {name}: {section} {component} undefined"
                )
                used[section].add(component)
    used["extensions"] = set(config["service"].get("extensions", []))
    for extension in used["extensions"]:
        assert extension in config.get("extensions", {}), f"service extension {extension} undefined"
    # An overlay may leave a component of config.yaml unused (the agent sends no traces to Jaeger); any
    # component an overlay itself defines must be used.
    overlays = [collector.load(path) for path in files[1:]]
    for section in collector.SECTIONS:
        unused = set(config.get(section, {})) - used[section]
        if overlays:
            unused &= set().union(*(overlay.get(section, {}) for overlay in overlays))
        assert not unused, f"{section} {sorted(unused)} defined but unused"


@combinations
def test_authenticators_are_running_extensions(files) -> None:
    config = collector.load(*files)
    for name, exporter in config["exporters"].items():
        authenticator = (exporter or {}).get("auth", {}).get("authenticator")
        if authenticator:
            assert authenticator in config["service"]["extensions"], f"{name}: {authenticator} not started"


def _push_exporters(config: dict) -> Iterator[tuple[str, dict]]:
    """(name, settings) of every exporter that sends requests; the load balancer's are per backend."""
    for name, exporter in config["exporters"].items():
        kind = collector.component_type(name)
        if kind in PUSH_EXPORTERS:
            yield name, exporter
        elif kind == "load_balancing":
            yield name, exporter["protocol"]["otlp"]


@combinations
def test_pipelines_protect_themselves(files) -> None:
    config = collector.load(*files)
    for name, pipeline in _pipelines(config).items():
        processors = pipeline["processors"]
        assert processors[0] == "memory_limiter", f"{name}: memory_limiter must come first"
        assert "batch" not in processors, f"{name}: batching is the exporters' own, sized in bytes"
    for name, exporter in _push_exporters(config):
        assert exporter["sending_queue"]["enabled"] is True, name
        assert exporter["retry_on_failure"]["enabled"] is True, name
        assert exporter["retry_on_failure"]["max_elapsed_time"] != 0, f"{name}: bounded retries"


@combinations
def test_every_export_request_is_bounded_in_bytes(files) -> None:
    config = collector.load(*files)
    for name, exporter in _push_exporters(config):
        queue = exporter["sending_queue"]
        batch = queue["batch"]
        assert queue["sizer"] == "bytes", f"{name}: the queue is measured in bytes"
        assert batch.get("sizer", queue["sizer"]) == "bytes", f"{name}: batches are measured in bytes"
        limit = REQUEST_LIMITS[collector.component_type(name)]
        assert 0 < batch["min_size"] <= batch["max_size"] <= 0.8 * limit, f"{name}: {batch} vs {limit}"
        assert batch["max_size"] < queue["queue_size"], name


def test_the_receiver_takes_what_an_sdk_batch_of_long_generations_weighs() -> None:
    protocols = collector.load(COLLECTOR_BASE)["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["max_recv_msg_size_mib"] >= 64
    assert protocols["http"]["max_request_body_size"] >= 64 * 2**20


def test_signals_go_where_they_belong() -> None:
    config = collector.load(COLLECTOR_BASE, COLLECTOR_LANGFUSE)
    pipelines = _pipelines(config)
    protocols = config["receivers"]["otlp"]["protocols"]
    assert {"grpc", "http"} <= protocols.keys()
    assert {"otlp_grpc/jaeger", "debug"} <= set(pipelines["traces"]["exporters"])
    assert {"prometheus", "debug"} <= set(pipelines["metrics"]["exporters"])
    assert pipelines["traces/langfuse"]["exporters"] == ["otlp_http/langfuse"]
    # Langfuse ingests traces only: no metrics pipeline sends there
    for name, pipeline in pipelines.items():
        if name.split("/")[0] != "traces":
            assert not any(e.startswith("otlp_http/langfuse") for e in pipeline["exporters"]), name
    assert config["exporters"]["prometheus"]["enable_open_metrics"] is True  # exemplars


def test_langfuse_exporter_speaks_langfuse_otlp() -> None:
    config = collector.load(COLLECTOR_BASE, COLLECTOR_LANGFUSE)
    exporter = config["exporters"]["otlp_http/langfuse"]
    assert exporter["traces_endpoint"] == "${env:LANGFUSE_HOST}/api/public/otel/v1/traces"
    assert exporter["headers"] == {"x-langfuse-ingestion-version": "4"}
    auth = config["extensions"][exporter["auth"]["authenticator"]]["client_auth"]
    assert auth == {"username": "${env:LANGFUSE_PUBLIC_KEY}", "password": "${env:LANGFUSE_SECRET_KEY}"}


def test_no_secret_is_written_in_the_configs() -> None:
    for path in collector.CONFIG_FILES:
        text = path.read_text()
        assert not re.search(r"(?i)authorization\s*:", text), (
            f"{path.name}: build auth from env, not a header"
        )
        assert not re.search(r"\b[ps]k-lf-[0-9a-f-]+", text), f"{path.name}: a Langfuse key"
        for key, value in _leaves(yaml.safe_load(text)):
            # the setting's own name: `routing_key` or a sampling policy's attribute `key` are no secrets
            setting = key.rsplit(".", 1)[-1]
            if re.fullmatch(r"(?i)(.*_)?(password|secret|token|api_?key|secret_?key)", setting):
                assert collector.ENV_REFERENCE.fullmatch(str(value)), f"{path.name}: {key} not from env"


def _leaves(node: object, prefix: str = "") -> Iterator[tuple[str, object]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def test_manifest_builds_exactly_the_components_used() -> None:
    used = set()
    for files in collector.COMBINATIONS.values():
        config = collector.load(*files)
        for section in collector.SECTIONS:
            used.update((section, collector.component_type(c)) for c in config.get(section, {}))
    unknown = used - MODULES.keys()
    assert not unknown, f"add the Go module of {sorted(unknown)} to MODULES and the manifest"
    manifest = yaml.safe_load(COLLECTOR_MANIFEST.read_text())
    built = {
        (section, entry["gomod"].split()[0])
        for section in collector.SECTIONS
        for entry in manifest.get(section, [])
    }
    assert built == {(section, MODULES[(section, kind)]) for section, kind in used}
    versions = {
        entry["gomod"].split()[1] for section in collector.SECTIONS for entry in manifest.get(section, [])
    }
    assert versions == {f"v{manifest['dist']['version']}"}, "one Collector release for every component"
    providers = {entry["gomod"].split()[0].rsplit("/", 1)[1] for entry in manifest["providers"]}
    assert providers == {"envprovider", "fileprovider"}  # ${env:...} and --config=<file>


def test_every_environment_variable_is_documented() -> None:
    doc = STACK_DOC.read_text()
    references = collector.env_references(*collector.CONFIG_FILES)
    assert references, "the configs take settings from the environment"
    undocumented = [name for name in references if f"`{name}`" not in doc]
    assert not undocumented, f"document {undocumented} in {STACK_DOC.name}"
    for name, default in references.items():
        if default is not None:
            assert f"`{default}`" in doc, f"document {name}'s default {default!r}"


def test_compose_sets_only_variables_the_config_reads() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    environment = compose["services"]["collector"].get("environment", {})
    references = collector.env_references(*collector.CONFIG_FILES)
    assert set(environment) <= set(references)
