"""Helpers of the built-in plugin tests: models with more layers, layers corrupted on purpose, forced
tokens, and per-row arrays read back out of span attributes. (GenerationInfo: ``analysis.helpers``.)"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import transformers

from corevital_otel import StepSeries, row_values
from tests.support.tiny_models import _COMMON_DECODER


def llama(layers: int = 2, seed: int = 0) -> torch.nn.Module:
    """A tiny random Llama with ``layers`` decoder layers (tiny_models' are 2 deep; bands need more)."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**{**_COMMON_DECODER, "num_hidden_layers": layers})
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    for candidate in ("model.layers", "transformer.h", "model.decoder.layers", "decoder.block"):
        module: Any = model
        try:
            for part in candidate.split("."):
                module = getattr(module, part)
        except AttributeError:
            continue
        return module
    raise LookupError(type(model).__name__)


@contextmanager
def corrupt_layer(
    model: torch.nn.Module, layer: int, value: float, from_call: int = 0, rows: slice = slice(None)
) -> Iterator[None]:
    """Replace decoder layer ``layer``'s output at the last position with ``value`` (NaN, Inf) or scale it
    (a finite ``value``) from its ``from_call``-th forward call on, for the given batch rows."""
    calls = {"n": 0}

    def hook(module, args, output):
        calls["n"] += 1
        if calls["n"] <= from_call:
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        if math.isfinite(value):
            hidden[rows, -1] = hidden[rows, -1] * value
        else:
            hidden[rows, -1] = value
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def series_of(attributes: dict[str, Any], name: str, rows: int) -> np.ndarray:
    """A ``corevital.steps.<name>`` attribute as a ``(rows, steps)`` float array (null -> NaN)."""
    values = np.array([np.nan if v is None else v for v in attributes[f"corevital.steps.{name}"]], float)
    return values.reshape(rows, -1)


def array_of(attributes: dict[str, Any], name: str, *shape: int) -> np.ndarray:
    """An array attribute as floats (null -> NaN); a per-row plain value (one row) as one entry."""
    values = np.array([np.nan if v is None else v for v in row_values(attributes[name])], dtype=float)
    return values.reshape(shape) if shape else values


def step_series(
    arrays: dict[str, np.ndarray], steps: int, rows: int, mask: np.ndarray | None = None
) -> StepSeries:
    return StepSeries(
        arrays=arrays,
        mask=np.ones((steps, rows), bool) if mask is None else mask,
        tokens=np.full((steps, rows), -1),
        step_seconds=np.arange(steps, dtype=float),
    )


class ForceTokens(transformers.LogitsProcessor):
    """Makes generate() choose ``tokens[step]`` (per row: ``tokens[row][step]`` when nested) whatever the
    model says; the raw logits the plugins see are untouched."""

    def __init__(self, tokens: list[int] | list[list[int]], prompt_length: int) -> None:
        self.tokens = tokens
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        forced = torch.full_like(scores, float("-inf"))
        for row in range(scores.shape[0]):
            plan = self.tokens[row] if isinstance(self.tokens[0], list) else self.tokens
            forced[row, plan[min(step, len(plan) - 1)]] = 0.0
        return forced


def non_finite_numbers(value: Any) -> list[Any]:
    """Every float in an attribute value that is NaN or ±Inf."""
    items = value if isinstance(value, (tuple, list)) else (value,)
    return [item for item in items if isinstance(item, float) and not math.isfinite(item)]


def hook_outputs(
    model: torch.nn.Module, pick: Callable[[Any], torch.Tensor]
) -> tuple[list[torch.Tensor], Any]:
    """Record ``pick(output)`` of every forward call of ``model``; returns (records, handle)."""
    records: list[torch.Tensor] = []
    handle = model.register_forward_hook(
        lambda module, args, output: records.append(pick(output).detach().clone())
    )
    return records, handle
