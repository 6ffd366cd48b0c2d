"""Fixtures of the reliability tests; ``telemetry`` and ``instrumented`` come from tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import corevital_otel
from corevital_otel.capture.active import ACTIVE_CAPTURE
from corevital_otel.patching import installed


@pytest.fixture(autouse=True)
def _nothing_left_behind() -> Iterator[None]:
    """Each test starts uninstrumented and must leave no patch and no active capture behind."""
    if corevital_otel.is_instrumented():
        corevital_otel.uninstrument()
    yield
    if corevital_otel.is_instrumented():
        corevital_otel.uninstrument()
    assert ACTIVE_CAPTURE.get() is None
    assert installed() == ()

