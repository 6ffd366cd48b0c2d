"""The span attributes a trace UI shows at a glance, read through one place so that a renamed attribute
changes here only (plain values at batch 1: docs/telemetry.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RISK_SCORE = "corevital.risk.score"  # float at batch 1
RISK_LEVEL = "corevital.risk.level"  # "low" / "medium" / "high" at batch 1
FLAGS = "corevital.health.flags"  # string list: the health flags that fired
RISK_LEVELS = ("low", "medium", "high")
# docs/telemetry.md's span budget: a healthy 64-token batch-1 generation in the default mode.
DEFAULT_MODE_MAX_KEYS = 80
# Keys a trace UI derives from ours (Phoenix's OpenInference view of the gen_ai.* attributes).
DERIVED_PREFIXES = ("llm.", "input.", "output.", "openinference.")


def own_keys(attributes: Mapping[str, Any]) -> list[str]:
    """The attribute keys the instrumentation sent, without those the backend derived from them."""
    return [key for key in attributes if not key.startswith(DERIVED_PREFIXES)]


def risk(attributes: Mapping[str, Any]) -> tuple[float, str]:
    """The generation's risk score and level as the plain scalars a UI can show and filter on."""
    score, level = attributes[RISK_SCORE], attributes[RISK_LEVEL]
    assert isinstance(score, float) and 0.0 <= score <= 1.0, f"{RISK_SCORE}={score!r}: not a scalar score"
    assert level in RISK_LEVELS, f"{RISK_LEVEL}={level!r}: not a scalar level"
    return score, level
