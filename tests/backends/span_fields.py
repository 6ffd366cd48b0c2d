"""The span attributes a trace UI shows at a glance, read through one place so that a renamed attribute
changes here only (the compact span of issue 14 adds the scalars at batch 1)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RISK_SCORE = "corevital.risk.score"  # float at batch 1
RISK_LEVEL = "corevital.risk.level"  # "low" / "medium" / "high" at batch 1
FLAGS = "corevital.flags"  # string list: the health flags that fired
RISK_LEVELS = ("low", "medium", "high")
# docs/telemetry.md's budget: a healthy 64-token batch-1 generation in the default mode.
DEFAULT_MODE_MAX_KEYS = 80


def risk(attributes: Mapping[str, Any]) -> tuple[float, str]:
    """The generation's risk score and level as the plain scalars a UI can show and filter on."""
    score, level = attributes[RISK_SCORE], attributes[RISK_LEVEL]
    assert isinstance(score, float) and 0.0 <= score <= 1.0, f"{RISK_SCORE}={score!r}: not a scalar score"
    assert level in RISK_LEVELS, f"{RISK_LEVEL}={level!r}: not a scalar level"
    return score, level
