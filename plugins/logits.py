"""Logit metrics from the model's raw next-token distribution, never from the sampler's.

Per step and row: Shannon entropy (bits), perplexity 2^H, surprisal of the chosen token (bits),
top-1 minus top-2 probability margin, top-10 probability mass and max probability. Computed from the
logits shifted by their largest (a log-sum-exp in base 2), so logits masked to -inf (by the model or a
bad-words list in the model) stay finite; a NaN logit makes every statistic of its row NaN (exported as
null), never a confident-looking number. NaN/Inf logits are flagged by the health plugin.
"""

from __future__ import annotations

import torch

from corevital_otel import GenerationInfo, GenerationResults, MetricSpec, StepBlock, StepSeries, hookimpl
from corevital_otel.plugins._entropy import LN2, LOG2E, softmax_entropy
from corevital_otel.plugins._slices import cache_slices, join_slices
from corevital_otel.plugins._summary import publish, real_values

COREVITAL_PLUGIN_NAME = "logits"
_TOP_K_MASS = 10
_CHUNK = 128  # vocabulary entries per chunk when searching the top-k (see largest_values)
# A chosen token's shifted logit below this (a masked one is -inf) is clamped to it: its surprisal stays a
# large finite number.
_LOWEST_SHIFT = -1.0e4 / LN2  # in bits, like every shifted logit

_BIT_BUCKETS = (0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0)

# (series, span attribute, reduction over a row's steps)
_AGGREGATES = (
    ("logits.entropy", "corevital.logits.entropy.mean", "mean"),
    ("logits.entropy", "corevital.logits.entropy.max", "max"),
    ("logits.perplexity", "corevital.logits.perplexity.mean", "mean"),
    ("logits.surprisal", "corevital.logits.surprisal.mean", "mean"),
    ("logits.margin", "corevital.logits.margin.mean", "mean"),
    ("logits.top10_mass", "corevital.logits.top10_mass.mean", "mean"),
)


_LARGEST = "logits.largest"  # the top-1 raw logit: NaN when any logit is, as max() gives it
_POSITIVE_INFINITY = "logits.positive_infinity"  # whether a row holds a +inf logit
# The step series logit_statistics gives (plugins export these).
STATISTICS = (
    "logits.entropy",
    "logits.perplexity",
    "logits.surprisal",
    "logits.margin",
    "logits.top10_mass",
    "logits.max_probability",
)


def largest_values(values: torch.Tensor, k: int) -> torch.Tensor:
    """``values.topk(k).values`` over the last dimension, at little more than the cost of a max.

    The ``k`` largest values lie in the ``k`` chunks (of ``_CHUNK`` consecutive entries) with the largest
    maxima: any other chunk's entries are all below ``k`` larger ones. So one max per chunk, a top-k of
    those, and a top-k over the chosen chunks (plus the ragged tail) give exactly the top-k values.
    """
    size = values.shape[-1]
    if size <= 4 * k * _CHUNK:
        return values.topk(k, dim=-1).values
    whole = size - size % _CHUNK
    chunks = values[..., :whole].unflatten(-1, (-1, _CHUNK))  # a view: (..., chunks, _CHUNK)
    best = chunks.amax(dim=-1).topk(k, dim=-1).indices
    candidates = chunks.gather(-2, best.unsqueeze(-1).expand(*best.shape, _CHUNK)).flatten(-2)
    if whole < size:
        candidates = torch.cat([candidates, values[..., whole:]], dim=-1)
    return candidates.topk(k, dim=-1).values


def logit_statistics(
    logits: torch.Tensor,
    chosen: torch.Tensor | None,
    scratch: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Statistics of raw logits ``(..., vocab)`` per leading index (a row, or a step and a row);
    ``chosen`` holds the chosen token ids ``(...)`` (``-1`` where unknown) or is None.

    Few passes over the vocabulary, in base 2 (every statistic is in bits): one top-k (the largest logit
    and the top-10), then :func:`softmax_entropy` (the shifted logits, their powers of 2 and two sums);
    the chosen token's surprisal is ``log2 S - d_chosen``. A masked logit (-inf) contributes nothing; a NaN
    or +inf logit makes every statistic of its row NaN. Also gives the largest logit and where a +inf logit
    is (for the health plugin). ``scratch``: two float32 tensors shaped like ``logits`` for the
    shifted logits and the powers (reused across the slices of a block: fresh ones per slice made the
    allocator map and fault pages in for every slice); the first may be ``logits`` itself, which is then
    overwritten. Otherwise ``logits`` is never written.
    """
    z = logits.float()
    top = largest_values(z, min(_TOP_K_MASS, z.shape[-1]))
    largest = top[..., :1]
    shift_buffer, weight_buffer = (None, None) if scratch is None else scratch
    positive_infinity = _has_positive_infinity(z, largest[..., 0], out=weight_buffer)  # before z is shifted
    entropy, total, log_total, shifted = softmax_entropy(z, largest, (shift_buffer, weight_buffer))
    if chosen is not None:
        chosen = chosen.long()
        # Clamped like a masked logit's shift: a chosen -inf logit gets a large finite surprisal.
        picked = shifted.gather(-1, chosen.clamp(min=0).unsqueeze(-1)).squeeze(-1).clamp(min=_LOWEST_SHIFT)
    top_probs = torch.exp2((top - largest) * LOG2E) / total.unsqueeze(-1)
    second = top_probs[..., 1] if top.shape[-1] > 1 else torch.zeros_like(top_probs[..., 0])
    if chosen is not None:
        surprisal = torch.where(chosen >= 0, log_total - picked, torch.full_like(picked, float("nan")))
    else:
        surprisal = torch.full_like(entropy, float("nan"))
    return {
        "logits.entropy": entropy,
        "logits.perplexity": torch.exp2(entropy),
        "logits.surprisal": surprisal,
        "logits.margin": top_probs[..., 0] - second,
        "logits.top10_mass": top_probs.sum(dim=-1),
        "logits.max_probability": top_probs[..., 0],
        _LARGEST: largest[..., 0],
        _POSITIVE_INFINITY: positive_infinity,
    }


def _has_positive_infinity(
    logits: torch.Tensor, largest: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``(...)`` True where a row holds a +inf logit, NaN or not. Without a NaN in the rows, their largest
    logit says it; on the CPU, where reading that costs no device sync, only rows with a NaN pay a pass
    over the logits. The pass compares into a float tensor (``out``, a float32 buffer shaped like
    ``logits``, when given) and reduces with max(): a bool result and any() cost several times more there."""
    if largest.device.type == "cpu" and not bool(largest.isnan().any()):
        return largest == float("inf")
    out = torch.empty_like(logits, dtype=torch.float32) if out is None else out
    return torch.eq(logits, float("inf"), out=out).amax(dim=-1) > 0


def _block_pass(block: StepBlock) -> dict[str, torch.Tensor]:
    """Everything plugins read from a block's logits, in one pass family over cache-sized slices of steps
    (``_slices``): :func:`logit_statistics`, with the largest logit and where a +inf logit is."""
    chosen = block.chosen if any(block.chosen_known) else None
    step_shape = block.logit_step_shape
    slices = cache_slices(block.steps, step_shape.numel(), block.device)
    # Two slice-sized buffers for the whole block: the stacked logits (shifted in place) and the
    # exponentials.
    widest = max(window.stop - window.start for window in slices)
    buffers = torch.empty((2, widest, *step_shape), dtype=torch.float32, device=block.device)

    def pass_over(window: slice) -> dict[str, torch.Tensor]:
        stacked, weights = buffers[:, : window.stop - window.start]
        part = block.logits_window(window, out=stacked)  # a slice at a time while the block is per step
        return logit_statistics(part, None if chosen is None else chosen[window], (part, weights))

    return join_slices([pass_over(window) for window in slices])


def _memo_pass(block: StepBlock) -> dict[str, torch.Tensor]:
    if "logits.pass" not in block.memo:
        block.memo["logits.pass"] = _block_pass(block)
    return block.memo["logits.pass"]


def largest_logit(block: StepBlock) -> torch.Tensor:
    """``(steps, rows)`` largest raw logit (NaN when any logit is NaN), once per block for every plugin."""
    return _memo_pass(block)[_LARGEST]


def positive_infinite_logit(block: StepBlock) -> torch.Tensor:
    """``(steps, rows)`` True where a +inf logit was produced (-inf is a legitimate mask)."""
    return _memo_pass(block)[_POSITIVE_INFINITY]


def block_statistics(block: StepBlock) -> dict[str, torch.Tensor]:
    """:func:`logit_statistics` of a block, ``(steps, rows)`` each, computed once however many plugins ask."""
    return {name: value for name, value in _memo_pass(block).items() if name in STATISTICS}


@hookimpl
def corevital_declare_metrics() -> list[MetricSpec]:
    return [
        MetricSpec(
            "corevital.token.entropy",
            "bit",
            "histogram",
            "Entropy of the raw next-token distribution, per generated token.",
            _BIT_BUCKETS,
        ),
        MetricSpec(
            "corevital.token.surprisal",
            "bit",
            "histogram",
            "Surprisal of each generated token under the raw distribution.",
            _BIT_BUCKETS,
        ),
    ]


@hookimpl
def corevital_steps(info: GenerationInfo, block: StepBlock) -> dict[str, torch.Tensor] | None:
    if not block.has_logits:
        return None
    return block_statistics(block)


@hookimpl
def corevital_summarize(info: GenerationInfo, series: StepSeries, results: GenerationResults) -> None:
    entropy = series.get("logits.entropy")
    if entropy is None:
        return
    mask = series.mask
    publish(series, results, _AGGREGATES)
    for value in real_values(entropy, mask):
        results.record_metric("corevital.token.entropy", value)
    for value in real_values(series.arrays["logits.surprisal"], mask):
        results.record_metric("corevital.token.surprisal", value)
