"""Risk: one score per row in [0, 1] with named factors, a running risk during generation, escalation.

The formula (docs/risk.md has the full statement)::

    risk = 1.0                                       when NaN/Inf appeared (factor nan / inf)
    risk = min(1, floor + sum_c weight_c * component_c)  otherwise

    floor       = max of the fired flags' floors: repetition_loop 0.7, mid_layer_anomaly 0.5,
                  attention_collapse 0.15 (structural, often present in healthy runs)
    component_c = mean over the row's steps of scale_c(x_t), for entropy (0.30), margin (0.15),
                  top-k mass (0.10) and surprisal (0.15); scale_c is 0 at the family's (or baseline's)
                  typical value and 1 at its bad value (plugins/_scales.py)
    entropy_trend (0.10) = rise of entropy over the row (least-squares slope x (steps - 1)) divided by
                  the entropy scale's typical-to-bad distance, clipped to [0, 1]; needs 4 steps

The continuous part alone tops out at 0.8, so only a flag drives a row to 1.0, and a healthy row (whose
metrics sit near the typical values) scores near 0. ``risk.running`` is the same continuous part per
step, smoothed with an exponential moving average, and 1.0 from the first NaN/Inf on: it is computed
on the device during generation and read by the ``risk`` intervention policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from corevital_otel import GenerationInfo, GenerationResults, MetricSpec, StepBlock, StepSeries, hookimpl
from corevital_otel.plugins import _inputs, _options, _trends
from corevital_otel.plugins._inputs import Flags
from corevital_otel.plugins._scales import METRICS, SERIES, Scales, resolve
from corevital_otel.plugins.health import hidden_nonfinite
from corevital_otel.plugins.logits import block_statistics, largest_logit

COREVITAL_PLUGIN_NAME = "risk"

WEIGHTS: Mapping[str, float] = {"entropy": 0.30, "margin": 0.15, "topk_mass": 0.10, "surprisal": 0.15}
TREND_WEIGHT = 0.10
TREND_MIN_STEPS = 4
FLOORS: Mapping[str, float] = {"repetition_loop": 0.7, "mid_layer_anomaly": 0.5, "attention_collapse": 0.15}
FACTOR_MIN_CONTRIBUTION = 0.02  # a continuous component is named as a factor from this contribution on
LEVEL_BOUNDS = ((0.3, "low"), (0.7, "medium"))  # below 0.3 low, below 0.7 medium, else high
DEFAULT_ESCALATE_THRESHOLD = 0.7
RUNNING_ALPHA = 0.3  # EMA weight of the newest step in risk.running
RUNNING_SERIES = "risk.running"

SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def risk_level(score: float) -> str:
    for bound, level in LEVEL_BOUNDS:
        if score < bound:
            return level
    return "high"


@dataclass(frozen=True)
class RowRisk:
    score: float
    factors: tuple[str, ...]  # fired flags first, then continuous components by contribution
    contributions: Mapping[str, float] = field(default_factory=dict)

    @property
    def level(self) -> str:
        return risk_level(self.score)


def components(values: Mapping[str, np.ndarray | None], scales: Scales) -> dict[str, float]:
    """Each continuous component's contribution (weight x component) for one row's series."""
    contributions: dict[str, float] = {}
    for metric in METRICS:
        series = values.get(metric)
        if series is None:
            continue
        scored = scales.of(metric).score(series)
        finite = scored[np.isfinite(scored)]
        if finite.size:
            contributions[metric] = WEIGHTS[metric] * float(finite.mean())
    entropy = values.get("entropy")
    if entropy is not None and np.isfinite(entropy).sum() >= TREND_MIN_STEPS:
        _, points = _trends.finite_points(entropy)
        rise = _trends.slope(entropy) * (points.size - 1)
        span = abs(scales.entropy.bad - scales.entropy.typical)
        contributions["entropy_trend"] = TREND_WEIGHT * float(np.clip(rise / span, 0.0, 1.0))
    return contributions


def row_risk(values: Mapping[str, np.ndarray | None], flags: Flags, scales: Scales) -> RowRisk:
    """The risk of one row from its step series (by metric name) and its health flags."""
    contributions = components(values, scales)
    named = sorted(
        (name for name, value in contributions.items() if value >= FACTOR_MIN_CONTRIBUTION),
        key=lambda name: -contributions[name],
    )
    fired = flags.fired
    if flags.nonfinite:
        return RowRisk(1.0, (*fired, *named), contributions)
    floor = max((FLOORS[name] for name in fired if name in FLOORS), default=0.0)
    score = float(min(1.0, floor + sum(contributions.values())))
    return RowRisk(score, (*fired, *named), contributions)


def _settings(info: GenerationInfo) -> Mapping[str, Any]:
    return _options.settings(info.options, COREVITAL_PLUGIN_NAME)


# -- during generation ---------------------------------------------------------------------------


def step_risk(statistics: Mapping[str, torch.Tensor], scales: Scales, known_token: bool) -> torch.Tensor:
    """Continuous risk per step and row from logit statistics (see logits.block_statistics): on the
    device, no host sync, and no constant tensors to copy over (scales enter as Python numbers). An
    unknown chosen token (NaN surprisal) is no evidence: it contributes 0."""
    metrics = {
        "entropy": statistics["logits.entropy"],
        "margin": statistics["logits.margin"],
        "topk_mass": statistics["logits.top10_mass"],
    }
    if known_token:  # the last step's token is only known after generation: no evidence then
        metrics["surprisal"] = statistics["logits.surprisal"]
    total = torch.zeros_like(metrics["topk_mass"])
    for metric, values in metrics.items():
        scale = scales.of(metric)
        scored = ((values - scale.typical) / (scale.bad - scale.typical)).clamp(0.0, 1.0)
        total = total + WEIGHTS[metric] * torch.nan_to_num(scored, nan=0.0)
    return total


@hookimpl
def corevital_generation_start(info: GenerationInfo) -> None:
    _settings(info)  # a misspelt option fails here, reported, rather than being ignored
    info.state[COREVITAL_PLUGIN_NAME] = {"scales": resolve(info), "ema": None, "broken": None}


def running_average(instant: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    """``(steps, rows)`` exponential moving average of ``instant`` continuing from ``previous`` ``(rows,)``
    (the first step starts it when None): one small matmul per block instead of a loop over steps."""
    steps = instant.shape[0]
    if previous is None or previous.shape != instant.shape[1:]:
        previous = instant[0]
    index = torch.arange(steps, device=instant.device)
    lag = index[:, None] - index[None, :]
    keep = 1.0 - RUNNING_ALPHA
    weights = torch.where(lag >= 0, RUNNING_ALPHA * keep ** lag.clamp(min=0).float(), 0.0)
    carried = (keep ** (index + 1).float())[:, None] * previous
    return weights @ instant + carried


@hookimpl
def corevital_steps(info: GenerationInfo, block: StepBlock) -> dict[str, torch.Tensor] | None:
    state = info.state.get(COREVITAL_PLUGIN_NAME)
    if state is None or block.logits is None or _settings(info).get("running") is False:
        return None
    if info.capture_mode == "summary" and not info.consumed_live(RUNNING_SERIES):
        return None  # summary mode exports no step series: only a live reader would need it
    instant = step_risk(block_statistics(block), state["scales"], known_token=True)  # (steps, rows)
    # -inf is a legitimate logit mask; NaN and +inf are breakage: the largest logit is NaN or +inf then.
    largest = largest_logit(block)
    broken = largest.isnan() | largest.isposinf()
    if block.hidden is not None:  # a NaN or Inf in any layer's hidden state counts
        nan, inf = hidden_nonfinite(block)
        broken |= (nan | inf).any(dim=1).to(broken.device)
    ema = running_average(instant, state["ema"])
    if state["broken"] is not None and state["broken"].shape == broken.shape[1:]:
        broken = broken | state["broken"]
    seen = torch.cummax(broken.to(torch.uint8), dim=0).values.bool()
    state["ema"], state["broken"] = ema[-1], seen[-1]
    return {RUNNING_SERIES: torch.where(seen, torch.ones_like(ema), ema)}


# -- after generation ----------------------------------------------------------------------------


@hookimpl
def corevital_declare_metrics() -> list[MetricSpec]:
    return [
        MetricSpec(
            "corevital.risk.score",
            "1",
            "histogram",
            "Risk score of each generated row, in [0, 1].",
            SCORE_BUCKETS,
        ),
        MetricSpec(
            "corevital.generations",
            "{generation}",
            "counter",
            "Generated rows, by corevital.risk.level (low < 0.3 <= medium < 0.7 <= high).",
        ),
    ]


def row_values(series: StepSeries, row: int) -> dict[str, np.ndarray | None]:
    """One row's logit series by risk metric name."""
    return {metric: _inputs.row_series(series, name, row) for metric, name in SERIES.items()}


@hookimpl(trylast=True)  # after the health plugin's assess, whose flags set the floors
def corevital_assess(info: GenerationInfo, series: StepSeries, results: GenerationResults) -> None:
    scales = resolve(info)
    row_flags = _inputs.flags(info, series, results)
    risks = [row_risk(row_values(series, row), row_flags[row], scales) for row in range(len(row_flags))]
    if not risks:
        return
    scores = [risk.score for risk in risks]
    results.set_rows("corevital.risk.score", scores, important=True)
    results.set_rows("corevital.risk.level", [risk.level for risk in risks], important=True)
    results.set_rows("corevital.risk.factors", [",".join(risk.factors) for risk in risks], important=True)
    results.set("corevital.risk.max", max(scores), important=True)
    results.set("corevital.risk.calibration", scales.source)
    if info.capture_mode == "on_risk":
        threshold = float(_settings(info).get("escalate_threshold", DEFAULT_ESCALATE_THRESHOLD))
        if max(scores) >= threshold:
            results.escalate("risk")
        if any(flags.serious for flags in row_flags):
            results.escalate("serious_flag")
    for risk in risks:
        results.record_metric("corevital.risk.score", risk.score)
        results.record_metric("corevital.generations", 1, {"corevital.risk.level": risk.level})
