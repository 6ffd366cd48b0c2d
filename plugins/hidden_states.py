"""Hidden-state metrics per layer at each generated token's position.

The capture hands over each decoder layer's output at the new position, i.e. the *pre-final-norm*
residual stream (transformers' ``output_hidden_states[-1]`` is post-norm). Per layer and row: L2 norm,
mean, standard deviation (population, over the hidden dimension) and max |x|; NaN/Inf presence per layer is
the health plugin's. L2 norms are kept in every capture mode (the mid-layer flag and layer blame read
them); mean, std and max |x| only when the capture mode may export per-layer detail.
"""

from __future__ import annotations

import math

import torch

from corevital_otel import GenerationInfo, GenerationResults, StepBlock, StepSeries, hookimpl
from corevital_otel.plugins._summary import publish, wants_detail

COREVITAL_PLUGIN_NAME = "hidden_states"

# Kept in the default span (one value per layer), the rest of the per-layer detail only in full detail.
COMPACT_LAYER_ATTRIBUTES = frozenset({"corevital.layers.hidden_states.l2_norm.mean"})
_LAYER_AGGREGATES = (
    ("hidden_states.layers.l2_norm", "corevital.layers.hidden_states.l2_norm.mean", "mean"),
    ("hidden_states.layers.l2_norm", "corevital.layers.hidden_states.l2_norm.max", "max"),
    ("hidden_states.layers.mean", "corevital.layers.hidden_states.mean", "mean"),
    ("hidden_states.layers.std", "corevital.layers.hidden_states.std", "mean"),
    ("hidden_states.layers.max_abs", "corevital.layers.hidden_states.max_abs", "max"),
)
_ROW_AGGREGATES = (
    ("hidden_states.l2_norm.last", "corevital.hidden_states.l2_norm.last.mean", "mean"),
    ("hidden_states.l2_norm.max", "corevital.hidden_states.l2_norm.max", "max"),
)


def hidden_block_values(hidden: torch.Tensor, detail: bool) -> dict[str, torch.Tensor]:
    """Block outputs for ``(steps, layers, rows, dim)`` states: ``(steps, rows)`` series and
    ``(steps, rows, layers)`` ones."""
    hidden = hidden.float()
    l2 = torch.linalg.vector_norm(hidden, dim=-1)  # (steps, layers, rows)
    values = {
        "hidden_states.l2_norm.last": l2[:, -1],
        "hidden_states.l2_norm.max": l2.amax(dim=1),
        "hidden_states.layers.l2_norm": l2.transpose(1, 2),
    }
    if detail:
        mean = hidden.mean(dim=-1, keepdim=True)
        # Two passes (centre, then a norm) instead of torch.std, whose Welford loop is 10-20x slower on the
        # CPU; the values agree to float32 rounding. max |x| from two reductions, without an abs() copy.
        std = torch.linalg.vector_norm(hidden - mean, dim=-1) / math.sqrt(hidden.shape[-1])
        values["hidden_states.layers.mean"] = mean[..., 0].transpose(1, 2)
        values["hidden_states.layers.std"] = std.transpose(1, 2)
        max_abs = torch.maximum(hidden.amax(dim=-1), hidden.amin(dim=-1).neg_())
        values["hidden_states.layers.max_abs"] = max_abs.transpose(1, 2)
    return values


def hidden_step_values(hidden: torch.Tensor, detail: bool) -> dict[str, torch.Tensor]:
    """:func:`hidden_block_values` of one step's ``(layers, rows, dim)`` states."""
    return {name: value[0] for name, value in hidden_block_values(hidden.unsqueeze(0), detail).items()}


@hookimpl
def corevital_steps(info: GenerationInfo, block: StepBlock) -> dict[str, torch.Tensor] | None:
    if block.hidden is None:
        return None
    return hidden_block_values(block.hidden, wants_detail(info))


@hookimpl
def corevital_summarize(info: GenerationInfo, series: StepSeries, results: GenerationResults) -> None:
    publish(series, results, _ROW_AGGREGATES)
    if wants_detail(info):
        publish(series, results, _LAYER_AGGREGATES, compact=COMPACT_LAYER_ATTRIBUTES)
