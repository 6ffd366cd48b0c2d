"""Fixtures of the core tests; ``telemetry`` and ``instrumented`` come from tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import corevital_otel

from .helpers import RecordingPlugin


@pytest.fixture
def recorder() -> RecordingPlugin:
    return RecordingPlugin()


@pytest.fixture
def quiet(instrumented):
    """instrument() with only the given plugin objects (no entry-point plugins): the core alone."""

    def _instrument(*plugins, **options):
        return instrumented(plugins=list(plugins), builtin_plugins=False, **options)

    return _instrument



@pytest.fixture(autouse=True)
def _never_left_instrumented() -> Iterator[None]:
    """Each core test starts and ends uninstrumented, whatever the test before it did."""
    if corevital_otel.is_instrumented():
        corevital_otel.uninstrument()
    yield
    if corevital_otel.is_instrumented():
        corevital_otel.uninstrument()
