"""Fixtures of the telemetry tests; ``telemetry`` and ``instrumented`` come from tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

# Reused from the core tests: a started in-process OTLP/HTTP receiver, and the guard that every test
# starts and ends uninstrumented.
from tests.core.conftest import _never_left_instrumented  # noqa: F401

from .grpc_receiver import GrpcOtlpReceiver, running_grpc_receiver


@pytest.fixture
def grpc_receiver() -> Iterator[GrpcOtlpReceiver]:
    yield from running_grpc_receiver()
