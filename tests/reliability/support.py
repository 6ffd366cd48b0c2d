"""Helpers shared by the reliability tests (the core tests' helpers are imported from core.helpers)."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch

from corevital_otel.plugins import BUILTIN_PLUGINS
from tests.core.helpers import metric_points

_PLUGIN_FAILURE = re.compile(r"^plugin (\S+) failed in (\S+): (\S+)$")


def builtin_plugin_names() -> list[str]:
    """The plugins instrument() registers by default (listed in code)."""
    return sorted(BUILTIN_PLUGINS)


def plugin_failures(span: Any) -> set[tuple[str, str, str]]:
    """(plugin, phase, error type) of every plugin failure the span reports."""
    found = set()
    for entry in span.attributes.get("corevital.capture.lost", ()):
        match = _PLUGIN_FAILURE.match(entry)
        if match:
            found.add(match.groups())
    return found


def plugin_error_counts(telemetry: Any) -> Counter[tuple[str, str]]:
    """(plugin, phase) -> failures counted by the ``corevital.plugin.errors`` metric."""
    counted: Counter[tuple[str, str]] = Counter()
    for point in metric_points(telemetry, "corevital.plugin.errors"):
        key = (point.attributes["corevital.plugin.name"], point.attributes["corevital.plugin.phase"])
        counted[key] += point.value
    return counted


def greedy(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int, **extra: Any):
    """A deterministic call that runs every row to its token limit (EOS suppressed)."""
    eos = int(model.generation_config.eos_token_id)
    settings = dict(max_new_tokens=new_tokens, do_sample=False, suppress_tokens=[eos], **extra)
    return model.generate(input_ids=ids, attention_mask=mask, **settings)


def resident_bytes() -> int:
    """This process's resident set size, from /proc (no psutil)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def messages_in(message: Any) -> Iterator[Any]:
    """A protobuf message and every message nested in it, depth first."""
    yield message
    for descriptor, value in message.ListFields():
        if descriptor.type == descriptor.TYPE_MESSAGE:
            for child in value if descriptor.is_repeated else (value,):
                yield from messages_in(child)


def strings_in(message: Any) -> Iterator[str]:
    """Every string field value anywhere in a protobuf message (names, attribute values, log bodies)."""
    for nested in messages_in(message):
        for descriptor, value in nested.ListFields():
            if descriptor.type == descriptor.TYPE_STRING:
                yield from value if descriptor.is_repeated else (value,)


def full_scale() -> bool:
    """COREVITAL_RELIABILITY_FULL=1 runs the long versions (figures in docs/reliability.md)."""
    return os.environ.get("COREVITAL_RELIABILITY_FULL", "") == "1"
