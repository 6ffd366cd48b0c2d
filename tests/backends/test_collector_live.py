"""Live tier: the Collector built from collector-config/builder-config.yaml (scripts/install_backends.sh)
accepts every shipped config combination (`validate`), rejects a broken one, and was built with exactly
the manifest's components (`components`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from . import collector, go_backends
from .repo import COLLECTOR_BASE, COLLECTOR_MANIFEST, ROOT
from .tiers import Tier, choose

IMAGE = "otel/opentelemetry-collector-contrib:0.161.0"
ENVIRONMENT = {  # placeholders: validate checks the configuration, it connects to nothing
    "LANGFUSE_HOST": "https://langfuse.invalid",
    "LANGFUSE_PUBLIC_KEY": "pk-lf-placeholder",
    "LANGFUSE_SECRET_KEY": "sk-lf-placeholder",
    "COREVITAL_GATEWAY_SAMPLERS": "[127.0.0.1:14317, 127.0.0.1:24317]",
}
BROKEN = "service:\n  pipelines:\n    traces:\n      exporters: [otlp_grpc/nowhere]\n"
# `components` lists these sections; the manifest's are the same minus `providers` (listed there too).
COMPONENT_SECTIONS = ("receivers", "processors", "exporters", "extensions", "connectors")


def _validate(tier: Tier, files: tuple[Path, ...]) -> tuple[int, str]:
    if tier.kind in ("env", "local"):
        result = subprocess.run(
            [tier.target, "validate", *(f"--config={path}" for path in files)],
            cwd=ROOT, env={**os.environ, **ENVIRONMENT}, capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
        return result.returncode, result.stdout + result.stderr
    from testcontainers.core.container import DockerContainer

    mounted = [f"--config=/etc/corevital/{path.relative_to(ROOT)}" for path in files]
    container = DockerContainer(tier.target).with_volume_mapping(str(ROOT), "/etc/corevital", "ro")
    container = container.with_command(" ".join(["validate", *mounted]))
    for name, value in ENVIRONMENT.items():
        container = container.with_env(name, value)
    with container:
        wrapped = container.get_wrapped_container()
        status = wrapped.wait(timeout=60)["StatusCode"]
        return status, wrapped.logs().decode(errors="replace")


@pytest.fixture(scope="module")
def otelcol() -> Tier:
    return choose(
        "OpenTelemetry Collector",
        "COREVITAL_TEST_OTELCOL",
        ("otelcol-corevital", "otelcol-contrib"),
        IMAGE,
        built=go_backends.collector(),
    )


@pytest.mark.parametrize("files", collector.COMBINATIONS.values(), ids=collector.COMBINATIONS.keys())
def test_collector_validates_the_shipped_config(otelcol: Tier, files: tuple[Path, ...]) -> None:
    code, output = _validate(otelcol, files)
    assert code == 0, output


def test_collector_rejects_a_broken_config(otelcol: Tier) -> None:
    broken = ROOT / "collector-config" / f".broken-{os.getpid()}.yaml"  # beside config.yaml: one mount
    broken.write_text(BROKEN)
    try:
        code, output = _validate(otelcol, (COLLECTOR_BASE, broken))
    finally:
        broken.unlink()
    assert code != 0
    assert "otlp_grpc/nowhere" in output


def test_collector_has_exactly_the_manifest_components() -> None:
    built = go_backends.collector()
    binary = os.environ.get("COREVITAL_TEST_OTELCOL") or built.path
    if binary is None:
        pytest.skip(built.problem)
    result = subprocess.run(
        [str(binary), "components"], capture_output=True, text=True, timeout=60, check=True
    )
    listed = yaml.safe_load(result.stdout)
    manifest = yaml.safe_load(COLLECTOR_MANIFEST.read_text())
    for section in COMPONENT_SECTIONS:
        modules = {entry["gomod"].split()[0] for entry in manifest.get(section) or []}
        found = {component["module"].split()[0] for component in listed.get(section) or []}
        assert found == modules, section
    providers = {entry["gomod"].split()[0] for entry in manifest["providers"]}
    assert {provider["module"].split()[0] for provider in listed["providers"]} == providers
    assert listed["buildinfo"]["version"] == manifest["dist"]["version"]
