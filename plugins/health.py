"""Health flags per generation and per sequence.

During generation the step hook produces the per-step health signals (on the device, no host sync):
``health.nonfinite`` (a NaN/Inf anywhere this step) and ``health.repetition`` (a loop under way, with
its evidence as bit flags, see ``_loops``), which intervention policies act on, plus per-layer NaN/Inf
evidence. After generation the
assess hook turns those and the other built-in plugins' series into flags.

Each flag is exported as ``corevital.health.<flag>`` (true if any row; for ``high_entropy_steps`` the
largest count of any row) and per row as ``corevital.health.per_row.<flag>``. A flag is left out when
none of its inputs were captured, so "false" always means "looked and found nothing". Thresholds come
from the model family's profile (see ``_profiles``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from corevital_otel import (
    GenerationInfo,
    GenerationResults,
    InterventionSignal,
    MetricSpec,
    StepBlock,
    StepCapture,
    StepSeries,
    hookimpl,
)
from corevital_otel.plugins._loops import LoopTracker
from corevital_otel.plugins._profiles import PROFILE_KEY, ProfileOptions, Thresholds, thresholds_for
from corevital_otel.plugins._summary import masked, publish, wants_detail
from corevital_otel.plugins.attention import block_row_statistics
from corevital_otel.plugins.logits import largest_logit, positive_infinite_logit

# The threshold profile this plugin reads (plugins/_profiles.py).
COREVITAL_OPTIONS = {PROFILE_KEY: ProfileOptions}
COREVITAL_PLUGIN_NAME = "health"
FLAG_METRIC = "corevital.health.flags"
_HIGH_ENTROPY_EVENTS = 8  # the highest-entropy steps flagged for an event; more would crowd out the rest
# Per-layer NaN/Inf presence, exported in full detail only: (series, attribute, reduction over steps).
_LAYER_DETAIL = (
    ("health.layers.nan", "corevital.layers.health.nan", "any"),
    ("health.layers.inf", "corevital.layers.health.inf", "any"),
)


@dataclass
class HealthState:
    """One generation's health plugin state: its thresholds and the loop tracker's small buffers."""

    thresholds: Thresholds
    loops: LoopTracker


def hidden_nonfinite(block: StepBlock) -> tuple[torch.Tensor, torch.Tensor]:
    """``(steps, layers, rows)`` NaN and Inf presence in each layer's hidden state, once per block."""
    if "hidden_states.nonfinite" not in block.memo:
        hidden = block.hidden
        assert hidden is not None
        # max() propagates NaN; with NaN set aside and -inf mapped to +inf, the max is +inf exactly when some
        # value is infinite. Two float reductions: bool any() is several times slower on the CPU.
        inf = float("inf")
        nan = hidden.amax(dim=-1).isnan()
        infinite = hidden.nan_to_num(nan=0.0, posinf=inf, neginf=inf).amax(dim=-1) == inf
        block.memo["hidden_states.nonfinite"] = (nan, infinite)
    return block.memo["hidden_states.nonfinite"]


def nonfinite_block_values(block: StepBlock) -> dict[str, torch.Tensor]:
    """NaN/Inf evidence of a block: ``health.nonfinite`` ``(steps, rows)``; per layer ``health.layers.nan``
    (in the layer's output or attention row) and ``health.layers.inf`` ``(steps, rows, layers)``; and
    ``health.logits_nonfinite`` ``(steps, rows, 2)``: a NaN, a +Inf logit (-Inf is a legitimate mask)."""
    values: dict[str, torch.Tensor] = {}
    found: list[torch.Tensor] = []
    if block.has_logits:
        # Both come from the logit plugin's one pass over the block (max propagates NaN).
        logits = torch.stack([largest_logit(block).isnan(), positive_infinite_logit(block)], dim=-1)
        values["health.logits_nonfinite"] = logits.float()
        found.append(logits.any(dim=-1))
    nan = inf = None
    if block.hidden is not None:
        nan, inf = hidden_nonfinite(block)  # (steps, layers, rows)
    if block.has_attention:
        # A row's largest weight is NaN exactly when one of its weights is (read from the attention
        # plugin's one pass over the block).
        attention = block_row_statistics(block)["concentration"].isnan().any(dim=-1)
        if nan is None:
            nan = attention
        elif nan.shape == attention.shape:
            nan = nan | attention
    for name, layers in (("health.layers.nan", nan), ("health.layers.inf", inf)):
        if layers is not None:
            values[name] = layers.transpose(1, 2).float()
            found.append(layers.any(dim=1))
    if found:
        values["health.nonfinite"] = torch.stack(found).any(dim=0).float()
    return values


def nonfinite_step_values(step: StepCapture) -> dict[str, torch.Tensor]:
    """:func:`nonfinite_block_values` of one step: ``(rows, ...)`` values."""
    return {name: value[0] for name, value in nonfinite_block_values(StepBlock.of_steps([step])).items()}


@dataclass
class Flag:
    """One health flag: per-row values, the layers involved and the first step it fired on."""

    name: str
    rows: np.ndarray  # (rows,) bool, or int counts for high_entropy_steps
    layers: list[int] = field(default_factory=list)
    first_step: int = -1


def _any_layer_hits(series: StepSeries, names: tuple[str, ...]) -> np.ndarray | None:
    """``(steps, rows, layers)`` True where any of the named 0/1 per-layer series is 1 on a real step."""
    hits = None
    for name in names:
        values = series.get(name)
        if values is None or values.ndim != 3:
            continue
        current = masked(values, series.mask) > 0.5
        if hits is not None and hits.shape != current.shape:
            continue  # series of different layer stacks cannot be combined layer by layer
        hits = current if hits is None else hits | current
    return hits


def _step_hits(series: StepSeries, name: str) -> np.ndarray | None:
    values = series.get(name)
    return None if values is None else masked(values, series.mask) > 0.5


def _flag_from_hits(name: str, layer_hits: np.ndarray | None, step_hits: np.ndarray | None) -> Flag | None:
    """A flag from ``(steps, rows, layers)`` and/or ``(steps, rows)`` hits; None when both are missing."""
    parts = [] if step_hits is None else [step_hits]
    layers: list[int] = []
    if layer_hits is not None:
        parts.append(layer_hits.any(axis=2))
        layers = np.flatnonzero(layer_hits.any(axis=(0, 1))).tolist()
    if not parts:
        return None
    hits = np.logical_or.reduce(parts)  # (steps, rows)
    steps = np.flatnonzero(hits.any(axis=1))
    return Flag(name, hits.any(axis=0), layers, int(steps[0]) if steps.size else -1)


def nonfinite_flags(series: StepSeries) -> list[Flag]:
    """NaN in a hidden state, an attention row or the logits; Inf in a hidden state or +Inf in the logits."""
    logits = series.get("health.logits_nonfinite")
    flags = []
    for kind, (name, per_layer) in enumerate(
        (("nan_detected", "health.layers.nan"), ("inf_detected", "health.layers.inf"))
    ):
        layer_hits = _any_layer_hits(series, (per_layer,))
        step_hits = None if logits is None else masked(logits[..., kind], series.mask) > 0.5
        flags.append(_flag_from_hits(name, layer_hits, step_hits))
    return [flag for flag in flags if flag is not None]


def collapse_flag(series: StepSeries) -> Flag | None:
    """A layer whose share of collapsed heads reached ``collapse_head_fraction`` at some step."""
    return _flag_from_hits(
        "attention_collapse_detected", _any_layer_hits(series, ("attention.layers.collapsed",)), None
    )


def high_entropy_flag(series: StepSeries, thresholds: Thresholds) -> Flag | None:
    entropy = series.get("logits.entropy")
    if entropy is None:
        return None
    hits = masked(entropy, series.mask) > thresholds.high_entropy_bits
    flag = _flag_from_hits("high_entropy_steps", None, hits)
    if flag is not None:
        counts = hits.sum(axis=0)
        steps = series.mask.sum(axis=0) if series.mask.ndim == 2 else np.full_like(counts, hits.shape[0])
        # A row fires when a real share of its steps is uncertain, not on any single uncertain step.
        fired = (counts > 0) & (counts >= thresholds.high_entropy_min_fraction * steps)
        flag.rows = np.where(fired, counts, 0)
    return flag


def repetition_flag(series: StepSeries) -> Flag | None:
    """A loop under way at some step: recurring last-layer states or a literal token loop."""
    return _flag_from_hits("repetition_loop_detected", None, _step_hits(series, "health.repetition"))


def _bands(layers: int) -> tuple[slice, slice]:
    """Early and middle thirds of a layer stack; at least one early and, from 2 layers, one middle layer."""
    early = max(1, layers // 3)
    return slice(0, early), slice(early, min(layers, max(early + 1, 2 * layers // 3)))


def mid_layer_flag(series: StepSeries, thresholds: Thresholds) -> Flag | None:
    """NaN/Inf in the middle third of the layers, or a middle layer's L2 norm above ``mid_layer_l2_ratio``
    times the mean L2 of the early layers *of the same step* (norms grow with depth and differ by step)."""
    l2 = series.get("hidden_states.layers.l2_norm")
    if l2 is None or l2.ndim != 3:
        return None
    early, middle = _bands(l2.shape[2])
    l2 = masked(l2, series.mask)
    with np.errstate(divide="ignore", invalid="ignore"):
        baseline = l2[:, :, early].mean(axis=2, keepdims=True)
        exploded = l2[:, :, middle] / baseline > thresholds.mid_layer_l2_ratio
    nonfinite = _any_layer_hits(series, ("health.layers.nan", "health.layers.inf"))
    if nonfinite is not None:
        exploded = exploded | nonfinite[:, :, middle]
    flag = _flag_from_hits("mid_layer_anomaly_detected", exploded, None)
    if flag is not None:
        flag.layers = [layer + middle.start for layer in flag.layers]
    return flag


def assess(series: StepSeries, thresholds: Thresholds) -> list[Flag]:
    flags = nonfinite_flags(series)
    flags += [
        collapse_flag(series),
        high_entropy_flag(series, thresholds),
        repetition_flag(series),
        mid_layer_flag(series, thresholds),
    ]
    return [flag for flag in flags if flag is not None]


def _flag_high_entropy_steps(series: StepSeries, results: GenerationResults, thresholds: Thresholds) -> None:
    entropy = masked(series.arrays["logits.entropy"], series.mask)
    worst = np.where(np.isfinite(entropy), entropy, -np.inf).max(axis=1)
    above = np.flatnonzero(worst > thresholds.high_entropy_bits)
    for step in above[np.argsort(-worst[above], kind="stable")][:_HIGH_ENTROPY_EVENTS]:
        results.flag_step(int(step), "high_entropy")


def publish_flags(
    flags: list[Flag], series: StepSeries, results: GenerationResults, thresholds: Thresholds
) -> None:
    results.set("corevital.health.profile", thresholds.family)
    raised = []
    for flag in flags:
        counted = flag.name == "high_entropy_steps"
        overall = int(flag.rows.max(initial=0)) if counted else bool(flag.rows.any())
        results.set(f"corevital.health.{flag.name}", overall, important=True)
        if overall:
            raised.append(flag.name)
        per_row = flag.rows.astype(np.int64 if counted else bool)  # with one row: the generation's value
        results.set_rows(f"corevital.health.per_row.{flag.name}", per_row, rows_only=True)
        fired = int((flag.rows > 0).sum())
        if fired:
            results.record_metric(FLAG_METRIC, fired, {"corevital.health.flag": flag.name})
        if flag.layers:
            results.set(f"corevital.health.layers.{flag.name}", flag.layers)
        if flag.first_step >= 0 and not counted:
            results.set(f"corevital.health.first_step.{flag.name}", flag.first_step)
            results.flag_step(flag.first_step, flag.name)
        elif counted and fired:
            _flag_high_entropy_steps(series, results, thresholds)
    results.set("corevital.health.flags", tuple(raised), important=True)


@hookimpl
def corevital_declare_interventions() -> list[InterventionSignal]:
    """Stop a row at its first NaN/Inf (``nan``) or once a repetition loop is under way (``repetition``)."""
    return [
        InterventionSignal("nan", "health.nonfinite"),
        InterventionSignal("repetition", "health.repetition"),
    ]


@hookimpl
def corevital_declare_metrics() -> list[MetricSpec]:
    return [
        MetricSpec(
            FLAG_METRIC,
            "{generation}",
            "counter",
            "Rows on which a health flag fired, by corevital.health.flag.",
        )
    ]


@hookimpl
def corevital_generation_start(info: GenerationInfo) -> None:
    thresholds = thresholds_for(info)
    info.state[COREVITAL_PLUGIN_NAME] = HealthState(thresholds, LoopTracker(thresholds))


@hookimpl
def corevital_steps(info: GenerationInfo, block: StepBlock) -> dict[str, torch.Tensor] | None:
    state: HealthState = info.state[COREVITAL_PLUGIN_NAME]
    values = nonfinite_block_values(block)
    if block.hidden is not None or block.has_logits or block.chosen is not None:
        hidden_last = None if block.hidden is None else block.hidden[:, -1]
        chosen = block.chosen if any(block.chosen_known) else None
        similarity, evidence = state.loops.block(hidden_last, chosen, block.rows, block.device)
        values["health.repetition"] = evidence
        if similarity is not None:
            values["health.state_similarity"] = similarity
    return values or None


@hookimpl
def corevital_assess(info: GenerationInfo, series: StepSeries, results: GenerationResults) -> None:
    state: HealthState = info.state[COREVITAL_PLUGIN_NAME]
    state.loops = LoopTracker(state.thresholds)  # drop the buffered states as soon as generation is over
    publish_flags(assess(series, state.thresholds), series, results, state.thresholds)
    if wants_detail(info):
        publish(series, results, _LAYER_DETAIL)
