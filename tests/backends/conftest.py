"""Fixtures shared by the backend tests: promtool, and the live Prometheus fed by instrumented generations."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider

import corevital_otel


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (scripts/install_backends.sh installs Debian's prometheus)")
    return path


def run_promtool(promtool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False)


@pytest.fixture
def instrument_with() -> Iterator[Callable[..., Any]]:
    """instrument() with the given tracer provider (and a throwaway meter provider); always uninstruments."""

    def _instrument(tracer_provider: Any, **options: Any) -> Any:
        options.setdefault("capture_mode", "full")  # the tiers read step series and events
        return corevital_otel.instrument(
            tracer_provider=tracer_provider, meter_provider=MeterProvider(), **options
        )

    yield _instrument
    corevital_otel.uninstrument()
