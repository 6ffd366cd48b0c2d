"""What the live tiers read from a generation span, in one place: the attribute names are those of
docs/telemetry.md today; when they change (a span size budget, scalar risk attributes), only this module
changes, and the gateway's sampling policies (collector-config/gateway/sampler.yaml) with it."""

from __future__ import annotations

from typing import Any

GENERATION_PREFIX = "text_completion"
RISK = "corevital.risk.max"  # the highest row risk of the generation, a double in [0, 1]
ESCALATED = "corevital.capture.escalated"
HIGH_RISK = 0.7  # corevital.risk.level "high" from here (docs/telemetry.md), the sampler's threshold
# Boolean health flags (corevital.health.<flag>); high_entropy_steps is a count, not a flag.
HEALTH_FLAGS = (
    "nan_detected",
    "inf_detected",
    "attention_collapse_detected",
    "repetition_loop_detected",
    "mid_layer_anomaly_detected",
)


def is_generation(name: str) -> bool:
    return name.startswith(GENERATION_PREFIX)


def risk(attributes: dict[str, Any]) -> float:
    return float(attributes[RISK])


def flags_fired(attributes: dict[str, Any]) -> list[str]:
    return [flag for flag in HEALTH_FLAGS if attributes.get(f"corevital.health.{flag}") is True]


def health_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in attributes.items() if key.startswith("corevital.health.")}


def kept_by_the_sampler(attributes: dict[str, Any], failed: bool) -> bool:
    """Whether gateway/sampler.yaml keeps a trace with this generation whatever its probabilistic share."""
    return (
        failed
        or risk(attributes) >= HIGH_RISK
        or bool(flags_fired(attributes))
        or attributes.get(ESCALATED) is True
    )
