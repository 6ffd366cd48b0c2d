"""Attention metrics of each generated token's query row, per layer and head, from the capture's softmax rows.

Per head: entropy (bits), entropy normalised by log(number of keys) and concentration (largest weight).
Per layer: min/mean/max of those over heads, and how many heads are *collapsed* (normalised entropy below
the profile's threshold) or *focused* (largest weight above it). A row that may attend to a single key
has no choice to make: its normalised entropy is undefined (NaN) and it is neither collapsed nor focused.
Keys a row may not attend to (padding, beyond a layer's keys) have weight exactly 0 and contribute nothing,
so a padded sequence gets the metrics of the same sequence unpadded.
"""

from __future__ import annotations

import math

import torch

from corevital_otel import GenerationInfo, GenerationResults, StepBlock, StepSeries, hookimpl
from corevital_otel.plugins._entropy import LN2, entropy_nats, softmax_entropy
from corevital_otel.plugins._profiles import PROFILE_KEY, ProfileOptions, Thresholds, thresholds_for
from corevital_otel.plugins._slices import cache_slices, join_slices
from corevital_otel.plugins._summary import publish, wants_detail

# The threshold profile this plugin reads (plugins/_profiles.py).
COREVITAL_OPTIONS = {PROFILE_KEY: ProfileOptions}
COREVITAL_PLUGIN_NAME = "attention"

# per-layer series -> (span attribute, reduction over a row's steps); exported in full detail only
# Kept in the default span (one value per layer), the rest of the per-layer detail only in full detail.
COMPACT_LAYER_ATTRIBUTES = frozenset({"corevital.layers.attention.entropy.mean"})
_LAYER_AGGREGATES = (
    ("attention.layers.entropy.mean", "corevital.layers.attention.entropy.mean", "mean"),
    ("attention.layers.entropy.min", "corevital.layers.attention.entropy.min", "min"),
    ("attention.layers.entropy.max", "corevital.layers.attention.entropy.max", "max"),
    (
        "attention.layers.normalized_entropy.mean",
        "corevital.layers.attention.normalized_entropy.mean",
        "mean",
    ),
    ("attention.layers.concentration.min", "corevital.layers.attention.concentration.min", "min"),
    ("attention.layers.concentration.max", "corevital.layers.attention.concentration.max", "max"),
    ("attention.layers.collapsed_heads", "corevital.layers.attention.collapsed_heads.max", "max"),
    ("attention.layers.focused_heads", "corevital.layers.attention.focused_heads.max", "max"),
)
_ROW_AGGREGATES = (
    ("attention.entropy.mean", "corevital.attention.entropy.mean", "mean"),
    ("attention.entropy.min", "corevital.attention.entropy.min", "min"),
    ("attention.concentration.max", "corevital.attention.concentration.max", "max"),
    ("attention.collapsed_heads", "corevital.attention.collapsed_heads.max", "max"),
)


def row_statistics(attention: torch.Tensor) -> dict[str, torch.Tensor]:
    """``nats`` (entropy) and ``concentration`` (largest weight) of every softmax row (the last dimension),
    computed over cache-sized slices of the first dimension. Both are NaN exactly when a weight of the row
    is (a softmax weight is never infinite)."""
    attention = attention.float()
    slices = cache_slices(attention.shape[0], attention[0].numel(), attention.device)
    widest = max(window.stop - window.start for window in slices)
    work = attention.new_empty((widest, *attention.shape[1:]))  # one buffer for every slice's temporaries

    def rows(window: slice) -> dict[str, torch.Tensor]:
        part = attention[window]
        nats = entropy_nats(part, out=work[: window.stop - window.start])
        return {"nats": nats, "concentration": part.amax(dim=-1)}

    return join_slices([rows(window) for window in slices])


def logit_row_statistics(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """:func:`row_statistics` of ``softmax(logits)``, from the logits (the lowest float where a row may not
    attend; every row may attend to some key), without the softmax: :func:`softmax_entropy` gives the
    entropy and the largest weight, ``1 / S``, with powers of 2 and no log per weight. NaN exactly when
    the weights would be (a NaN or +inf logit).

    Computed over the rows in the order they lie in memory (the capture's logits are a permuted view of
    its buffer: read through the view, each pass strides across it), in cache-sized slices; the
    statistics are put back in the view's order."""
    order = sorted(range(logits.dim() - 1), key=lambda dim: -logits.stride(dim))
    lying = logits.permute(*order, -1)
    slices = cache_slices(lying.shape[0], lying[0].numel(), lying.device)
    widest = max(window.stop - window.start for window in slices)
    work = lying.new_empty((2, widest, *lying.shape[1:]))  # the shifted logits and their powers

    def rows(window: slice) -> dict[str, torch.Tensor]:
        part = lying[window]
        shifted, powers = work[:, : window.stop - window.start]
        found = softmax_entropy(part, part.amax(dim=-1, keepdim=True), (shifted, powers))
        return {"nats": found.bits * LN2, "concentration": found.total.reciprocal()}

    back = sorted(range(len(order)), key=order.__getitem__)
    return {name: value.permute(*back) for name, value in join_slices([rows(w) for w in slices]).items()}


def block_row_statistics(block: StepBlock) -> dict[str, torch.Tensor]:
    """:func:`row_statistics` of a block's attention ``(steps, layers, rows, heads)`` each, computed once
    however many plugins ask (the health plugin reads its NaN rows); from its attention logits when the
    capture handed those."""
    if "attention.rows" not in block.memo:
        logits = block.attention_logits
        found = row_statistics(block.attention) if logits is None else logit_row_statistics(logits)
        block.memo["attention.rows"] = found
    return block.memo["attention.rows"]


def head_statistics(
    rows: dict[str, torch.Tensor], keys: torch.Tensor, thresholds: Thresholds
) -> dict[str, torch.Tensor]:
    """Per-head statistics from the :func:`row_statistics` of ``(layers, rows, heads, keys)`` weights and
    their ``(layers, rows)`` key counts.

    Returns ``(layers, rows, heads)`` tensors: ``entropy`` (bits), ``normalized_entropy`` (NaN for a
    single key), ``concentration``, and 0/1 ``collapsed`` and ``focused``.
    """
    nats, concentration = rows["nats"], rows["concentration"]
    choice = (keys > 1).unsqueeze(-1)
    log_keys = keys.clamp(min=2).float().log().unsqueeze(-1)
    normalized = torch.where(choice, nats / log_keys, torch.full_like(nats, float("nan")))
    # NaN compares False: a single-key row or a broken row is never counted as collapsed or focused.
    collapsed = normalized < thresholds.collapse_normalized_entropy
    focused = choice & (concentration > thresholds.focus_max_weight)
    return {
        "entropy": nats / LN2,
        "normalized_entropy": normalized,
        "concentration": concentration,
        "collapsed": collapsed.float(),
        "focused": focused.float(),
    }


def layer_collapsed(collapsed_heads: torch.Tensor, heads: int, thresholds: Thresholds) -> torch.Tensor:
    """0/1 per layer: at least ``collapse_head_fraction`` of its heads (and at least one) collapsed."""
    needed = max(1, math.ceil(thresholds.collapse_head_fraction * heads))
    return (collapsed_heads >= needed).float()


def _rows_first(per_layer: torch.Tensor) -> torch.Tensor:
    return per_layer.transpose(1, 2)  # (steps, layers, rows) -> (steps, rows, layers)


def attention_block_values(
    rows: dict[str, torch.Tensor], keys: torch.Tensor, thresholds: Thresholds, detail: bool
) -> dict[str, torch.Tensor]:
    """Block outputs from the :func:`row_statistics` of ``(steps, layers, rows, heads, keys)`` weights and
    their ``(steps, layers, rows)`` key counts: ``(steps, rows)`` series over all layers and heads,
    ``(steps, rows, layers)`` per-layer ones."""
    stats = head_statistics(rows, keys, thresholds)
    entropy, concentration = stats["entropy"], stats["concentration"]  # (steps, layers, rows, heads)
    collapsed = stats["collapsed"].sum(dim=-1)
    focused = stats["focused"].sum(dim=-1)
    values = {
        "attention.entropy.mean": entropy.mean(dim=(1, 3)),
        "attention.entropy.min": entropy.amin(dim=(1, 3)),
        "attention.concentration.max": concentration.amax(dim=(1, 3)),
        "attention.collapsed_heads": collapsed.sum(dim=1),
        "attention.focused_heads": focused.sum(dim=1),
        "attention.layers.entropy.mean": _rows_first(entropy.mean(dim=-1)),
        "attention.layers.collapsed_heads": _rows_first(collapsed),
        "attention.layers.collapsed": _rows_first(layer_collapsed(collapsed, entropy.shape[-1], thresholds)),
    }
    if detail:
        values.update(
            {
                "attention.layers.entropy.min": _rows_first(entropy.amin(dim=-1)),
                "attention.layers.entropy.max": _rows_first(entropy.amax(dim=-1)),
                "attention.layers.normalized_entropy.mean": _rows_first(stats["normalized_entropy"].mean(-1)),
                "attention.layers.concentration.min": _rows_first(concentration.amin(dim=-1)),
                "attention.layers.concentration.max": _rows_first(concentration.amax(dim=-1)),
                "attention.layers.focused_heads": _rows_first(focused),
            }
        )
    return values


def attention_step_values(
    attention: torch.Tensor, keys: torch.Tensor, thresholds: Thresholds, detail: bool
) -> dict[str, torch.Tensor]:
    """:func:`attention_block_values` of one step: ``(layers, rows, heads, keys)`` weights in, ``(rows,)``
    and ``(rows, layers)`` series out."""
    rows = row_statistics(attention.unsqueeze(0))
    values = attention_block_values(rows, keys.unsqueeze(0), thresholds, detail)
    return {name: value[0] for name, value in values.items()}


@hookimpl
def corevital_generation_start(info: GenerationInfo) -> None:
    info.state[COREVITAL_PLUGIN_NAME] = thresholds_for(info)


@hookimpl
def corevital_steps(info: GenerationInfo, block: StepBlock) -> dict[str, torch.Tensor] | None:
    if not block.has_attention or block.attention_keys is None:
        return None
    thresholds: Thresholds = info.state[COREVITAL_PLUGIN_NAME]
    rows = block_row_statistics(block)
    return attention_block_values(rows, block.attention_keys, thresholds, wants_detail(info))


@hookimpl
def corevital_summarize(info: GenerationInfo, series: StepSeries, results: GenerationResults) -> None:
    publish(series, results, _ROW_AGGREGATES)
    if wants_detail(info):
        publish(series, results, _LAYER_AGGREGATES, compact=COMPACT_LAYER_ATTRIBUTES)
