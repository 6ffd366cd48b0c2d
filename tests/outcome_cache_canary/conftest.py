"""Fixtures of the outcome, KV-cache, drift and probe tests (``instrumented``: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from core.otlp_receiver import OtlpReceiver, running_receiver

import corevital_otel


@pytest.fixture(autouse=True)
def _never_left_instrumented() -> Iterator[None]:
    if corevital_otel.is_instrumented():
        corevital_otel.uninstrument()
    yield
    if corevital_otel.is_instrumented():
        corevital_otel.uninstrument()


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    yield from running_receiver()
