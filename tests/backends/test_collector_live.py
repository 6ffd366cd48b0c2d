"""Live tier: a real Collector (`validate --config`) accepts the shipped configs, alone and with the
Langfuse overlay, and rejects a broken one."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .repo import COLLECTOR
from .tiers import Tier, choose

IMAGE = "otel/opentelemetry-collector-contrib:0.136.0"
ENVIRONMENT = {  # placeholders: validate checks the configuration, it connects to nothing
    "LANGFUSE_HOST": "https://langfuse.invalid",
    "LANGFUSE_PUBLIC_KEY": "pk-lf-placeholder",
    "LANGFUSE_SECRET_KEY": "sk-lf-placeholder",
}
BROKEN = "service:\n  pipelines:\n    traces:\n      exporters: [otlp/nowhere]\n"


def _validate(tier: Tier, directory: Path, files: tuple[str, ...]) -> tuple[int, str]:
    arguments = ["validate", *(f"--config={name}" for name in files)]
    if tier.kind in ("env", "local"):
        result = subprocess.run(
            [tier.target, *arguments], cwd=directory, env={**os.environ, **ENVIRONMENT},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        return result.returncode, result.stdout + result.stderr
    from testcontainers.core.container import DockerContainer

    container = DockerContainer(tier.target).with_volume_mapping(str(directory), "/etc/otelcol", "ro")
    container = container.with_command(
        " ".join(a.replace("--config=", "--config=/etc/otelcol/") for a in arguments)
    )
    for name, value in ENVIRONMENT.items():
        container = container.with_env(name, value)
    with container:
        wrapped = container.get_wrapped_container()
        status = wrapped.wait(timeout=60)["StatusCode"]
        return status, wrapped.logs().decode(errors="replace")


@pytest.fixture(scope="module")
def collector() -> Tier:
    return choose(
        "OpenTelemetry Collector", "COREVITAL_TEST_OTELCOL", ("otelcol-corevital", "otelcol-contrib"), IMAGE
    )


@pytest.mark.parametrize(
    "files", [("config.yaml",), ("config.yaml", "langfuse.yaml")], ids=["base", "base+langfuse"]
)
def test_collector_validates_the_shipped_config(collector: Tier, files: tuple[str, ...]) -> None:
    code, output = _validate(collector, COLLECTOR, files)
    assert code == 0, output


def test_collector_rejects_a_broken_config(collector: Tier, tmp_path: Path) -> None:
    shutil.copy(COLLECTOR / "config.yaml", tmp_path / "config.yaml")
    (tmp_path / "broken.yaml").write_text(BROKEN)
    code, _ = _validate(collector, tmp_path, ("config.yaml", "broken.yaml"))
    assert code != 0
