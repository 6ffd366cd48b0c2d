"""Risk: one graded score per row in [0, 1] with named factors, a running risk during generation, escalation.

The score (docs/risk.md has the full statement)::

    risk = 1.0                                   when NaN/Inf appeared (factor nan / inf): nothing else
    risk = min(0.999, sigmoid(b + Σ w_i f_i))    otherwise

    f = the row's feature vector (plugins/_risk_features.py): scaled entropy, margin, top-k mass,
        surprisal, entropy trend, first-step entropy, a loop graded by how much of the row it covered and
        how early it began, the mid-layer and attention-collapse flags
    b, w = the documented default combination, or the weights ``corevital-otel calibrate --outcomes``
        fitted to labelled generations of this model: the score is then the calibrated probability of
        the labelled failure (plugins/_risk_model.py); ``corevital.risk.calibration`` says which

A loop seen only on the last step barely moves the score; one under way from the start drives it
high, but only NaN/Inf reaches 1.0. ``risk.running`` is a separate, simpler per-step signal: the weighted
continuous components of each step's logits (``WEIGHTS``, at most 0.7 in all), smoothed with an
exponential moving average, and 1.0 from the first NaN/Inf on: it is computed on the device during
generation and read by the ``risk`` intervention policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from corevital_otel import (
    GenerationInfo,
    GenerationResults,
    InterventionSignal,
    MetricSpec,
    StepBlock,
    StepSeries,
    hookimpl,
)
from corevital_otel.plugins import _inputs, _lines, _options, _risk_features, _risk_model
from corevital_otel.plugins._inputs import Flags
from corevital_otel.plugins._risk_model import DEFAULT, CalibrationError, RiskModel, model_for
from corevital_otel.plugins._scales import METRICS, SERIES, Scales, resolve
from corevital_otel.plugins.health import hidden_nonfinite
from corevital_otel.plugins.logits import block_statistics, largest_logit

COREVITAL_PLUGIN_NAME = "risk"

WEIGHTS: Mapping[str, float] = {"entropy": 0.30, "margin": 0.15, "topk_mass": 0.10, "surprisal": 0.15}
FACTOR_MIN_LOGIT = 0.25  # a feature is named as a factor from this push (log-odds) towards risk on
FACTOR_FEATURES = (
    "entropy",
    "line_entropy",
    "margin",
    "topk_mass",
    "surprisal",
    "entropy_trend",
    "first_entropy",
)
LEVEL_BOUNDS = ((0.3, "low"), (0.7, "medium"))  # below 0.3 low, below 0.7 medium, else high
DEFAULT_ESCALATE_THRESHOLD = 0.7
RUNNING_ALPHA = 0.3  # EMA weight of the newest step in risk.running
RUNNING_SERIES = "risk.running"
FEATURES_ATTRIBUTE = "corevital.risk.features"
LINES_ATTRIBUTE = "corevital.risk.lines_known"

SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def risk_level(score: float) -> str:
    for bound, level in LEVEL_BOUNDS:
        if score < bound:
            return level
    return "high"


@dataclass(frozen=True)
class RowRisk:
    score: float
    factors: tuple[str, ...]  # fired flags first, then features by their push towards risk
    contributions: Mapping[str, float] = field(default_factory=dict)  # weight x feature, log-odds
    features: np.ndarray = field(default_factory=lambda: np.zeros(len(_risk_features.NAMES)))

    @property
    def level(self) -> str:
        return risk_level(self.score)


def components(values: Mapping[str, np.ndarray | None], scales: Scales) -> dict[str, float]:
    """The running risk's continuous part on the host (what :func:`step_risk` computes per step on the
    device), each metric's weight x its clipped scaled value, averaged over the row's steps."""
    contributions: dict[str, float] = {}
    for metric in METRICS:
        series = values.get(metric)
        if series is None:
            continue
        scored = scales.of(metric).score(series)
        finite = scored[np.isfinite(scored)]
        if finite.size:
            contributions[metric] = WEIGHTS[metric] * float(finite.mean())
    return contributions


def row_risk(
    values: Mapping[str, np.ndarray | None],
    flags: Flags,
    scales: Scales,
    model: RiskModel = DEFAULT,
    repetition: np.ndarray | None = None,
    line_steps: int | None = None,
) -> RowRisk:
    """The risk of one row from its step series (by metric name), its loop evidence per step
    (``health.repetition``), its health flags and the steps its first line took (None: never ended or
    unknown), under the default combination or a calibration."""
    features = _risk_features.row_features(values, repetition, flags, scales, line_steps)
    pushes = features * model.weights
    contributions = {name: float(pushes[i]) for i, name in enumerate(_risk_features.NAMES)}
    named = sorted(
        (name for name in FACTOR_FEATURES if contributions[name] >= FACTOR_MIN_LOGIT),
        key=lambda name: -contributions[name],
    )
    factors = (*flags.fired, *named)
    if flags.nonfinite:
        return RowRisk(1.0, factors, contributions, features)
    return RowRisk(float(model.score(features)), factors, contributions, features)


class RiskOptions(_options.PluginOptions):
    escalate_threshold: Any = _options.option(
        DEFAULT_ESCALATE_THRESHOLD, "on_risk: row risk at which the generation gets full detail"
    )
    scales: Any = _options.option(None, "risk scales per metric: {metric: [typical, bad]}")
    running: Any = _options.option(True, "compute the per-step risk.running series")
    calibration: Any = _options.option(
        None, "risk calibration file(s) from calibrate --outcomes", _risk_model.ENVIRONMENT_VARIABLE
    )


COREVITAL_OPTIONS = RiskOptions


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
    if state is None or not block.has_logits or _settings(info).get("running") is False:
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
def corevital_declare_interventions() -> list[InterventionSignal]:
    """Stop a row once its running risk reaches the user's ``intervention_risk_threshold`` (``risk``)."""
    return [InterventionSignal("risk", "risk.running", threshold=None)]


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


def line_ends(info: GenerationInfo, series: StepSeries, rows: int) -> tuple[list[int | None], bool]:
    """Per row the steps its first line took (None: it never ended, or the end is unknown), and whether
    every row's end was known: that needs the tokenizer and the row's chosen tokens (not under beams)."""
    if info.tokenizer is None:
        return [None] * rows, False
    newlines = _lines.newline_ids(info.tokenizer)
    lengths = _inputs.row_lengths(series)
    ends: list[int | None] = []
    known = True
    for row in range(rows):
        tokens = series.tokens[: int(lengths[row]), row] if row < len(lengths) else np.zeros(0, np.int64)
        known &= bool((tokens >= 0).all())
        ends.append(_lines.first_line_steps(tokens, newlines))
    return ends, known


def model_of(info: GenerationInfo) -> RiskModel:
    """The calibration fitted for this generation's model, else the default combination."""
    return model_for(info.model_name, _settings(info))


@hookimpl
def corevital_check_options(options: Mapping[str, Any]) -> None:
    """A calibration file that cannot be read fails instrument(), not every span (a misspelt option is
    reported on the span, by corevital_generation_start)."""
    settings = options.get(COREVITAL_PLUGIN_NAME)
    for path in _risk_model.configured_paths(settings if isinstance(settings, Mapping) else {}):
        try:
            _risk_model.load(path)
        except CalibrationError as error:
            raise ValueError(str(error)) from error  # the core names the plugin


@hookimpl(trylast=True)  # after the health plugin's assess, whose flags are read here
def corevital_assess(info: GenerationInfo, series: StepSeries, results: GenerationResults) -> None:
    try:
        model = model_of(info)
    except CalibrationError as error:
        results.note_lost(f"risk: {error}")
        model = DEFAULT
    scales = model.with_scales(resolve(info))
    row_flags = _inputs.flags(info, series, results)
    ends: list[int | None] = [None] * len(row_flags)
    lines_known = False  # a fit on rows without line ends gets whole-row lines, as its rows had
    if model is DEFAULT or model.lines_known:
        try:
            ends, lines_known = line_ends(info, series, len(row_flags))
        except Exception as error:  # the user's tokenizer failed to decode: lose the line ends only
            results.note_lost(f"risk: line ends: {type(error).__name__}: {error}"[:200])
    if model.lines_known and not lines_known:
        results.note_lost("risk: calibration fitted with line ends, none known here (tokenizer, tokens)")
    risks = [
        row_risk(
            row_values(series, row),
            row_flags[row],
            scales,
            model,
            _inputs.row_series(series, _inputs.STEP_REPETITION[0], row),
            ends[row],
        )
        for row in range(len(row_flags))
    ]
    if not risks:
        return
    scores = [risk.score for risk in risks]
    results.set_rows("corevital.risk.score", scores, important=True)
    results.set_rows("corevital.risk.level", [risk.level for risk in risks], important=True)
    results.set_rows("corevital.risk.factors", [",".join(risk.factors) for risk in risks], important=True)
    results.set("corevital.risk.max", max(scores), important=True)
    results.set("corevital.risk.calibration", model.source if model is not DEFAULT else scales.source)
    # rows x features, always an array (what calibrate --outcomes fits on): kept like the score
    features = [round(float(v), 6) for risk in risks for v in risk.features]
    results.set(FEATURES_ATTRIBUTE, features, important=True)
    results.set(LINES_ATTRIBUTE, lines_known)  # False: the line features cover whole rows
    if info.capture_mode == "on_risk":
        threshold = float(_settings(info).get("escalate_threshold", DEFAULT_ESCALATE_THRESHOLD))
        if max(scores) >= threshold:
            results.escalate("risk")
        if any(flags.serious for flags in row_flags):
            results.escalate("serious_flag")
    for risk in risks:
        results.record_metric("corevital.risk.score", risk.score)
        results.record_metric("corevital.generations", 1, {"corevital.risk.level": risk.level})
