"""Fixtures of the outcome, KV-cache, drift and probe tests (``instrumented``: tests/conftest.py).

The core tests' fixtures serve here too: every test starts and ends uninstrumented, and
``otlp_receiver`` is an in-process OTLP/HTTP receiver.
"""

from tests.core.conftest import _never_left_instrumented  # noqa: F401
