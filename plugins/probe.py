"""Hands a generation's results to the canary probe that started it (``corevital-otel probe``).

A probe run (``corevital_otel.canary``) opens a slot in a context variable around its generate() call; this
plugin fills it with the generation's results after every other plugin wrote them, so the probe can export
the health of its own generation (risk, entropy, flags, outcome) next to pass/fail — whether the probe runs
under the CLI's instrumentation or inside an application that instrumented itself. Outside a probe the slot
is unset and the plugin does nothing; it exports nothing itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from corevital_otel import GenerationInfo, GenerationResults, hookimpl

COREVITAL_PLUGIN_NAME = "probe"

_SLOT: ContextVar[dict[str, Any] | None] = ContextVar("corevital_probe_slot", default=None)


@contextmanager
def listening() -> Iterator[dict[str, Any]]:
    """A dict that receives ``model_name`` and ``attributes`` of the generations run inside the block
    (the last one wins); empty when the process is not instrumented or this plugin is disabled."""
    slot: dict[str, Any] = {}
    token = _SLOT.set(slot)
    try:
        yield slot
    finally:
        _SLOT.reset(token)


@hookimpl(trylast=True)  # after the other plugins' explain hooks: everything they wrote is there
def corevital_explain(info: GenerationInfo, results: GenerationResults) -> None:
    slot = _SLOT.get()
    if slot is not None:
        slot["model_name"] = info.model_name
        slot["attributes"] = dict(results.attributes)
