"""Block passes over cache-sized slices (``plugins/_slices.py``) give what one pass over the whole block
gives: the tiny test models fit a whole block into one slice, so these runs cut it into many (one step a
slice, and a ragged last slice) and compare every per-step and per-layer value."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from corevital_otel.plugins import _slices
from tests.support.plugin_testing import array_of, llama
from tests.support.tiny_models import VOCAB

ROWS, NEW_TOKENS = 2, 9


def _step_values(telemetry: Any, monkeypatch: pytest.MonkeyPatch, slice_elements: int) -> dict[str, Any]:
    """Every per-step and per-layer value of one generation whose block passes ran at ``slice_elements``."""
    monkeypatch.setattr(_slices, "CACHE_SLICE_ELEMENTS", slice_elements)  # read by every pass, per block
    model = llama(layers=3)
    ids = torch.randint(3, 90, (ROWS, 12), generator=torch.Generator().manual_seed(4))
    model.generate(input_ids=ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    attributes = dict(telemetry.generation_spans()[-1].attributes)
    values = {
        name: array_of(attributes, name)
        for name in attributes
        if name.startswith(("corevital.steps.", "corevital.layers.")) and "seconds" not in name
    }
    assert any(name.startswith("corevital.steps.logits.") for name in values)
    assert any(name.startswith("corevital.steps.attention.") for name in values)
    return values


def _widths(per_step: int, steps: int) -> list[int]:
    slices = _slices.cache_slices(steps, per_step, torch.device("cpu"))
    return [window.stop - window.start for window in slices]


def test_the_slice_arithmetic_covers_every_step_once():
    assert _widths(per_step=10, steps=9) == [9]  # default: far more than 9 steps of 10 values a slice
    assert _slices.cache_slices(9, 10, torch.device("meta")) == [slice(0, 9)]  # not a CPU: one slice
    assert _widths(per_step=_slices.CACHE_SLICE_ELEMENTS // 4, steps=9) == [4, 4, 1]
    assert _widths(per_step=_slices.CACHE_SLICE_ELEMENTS * 2, steps=3) == [1, 1, 1]  # never an empty slice


@pytest.mark.parametrize(
    "slice_elements",
    [1, 4 * ROWS * VOCAB],  # one step a slice everywhere; four steps of logits a slice: 4 + 4 + 1
    ids=["one-step-slices", "ragged-logit-slices"],
)
def test_sliced_block_passes_equal_one_pass_over_the_block(instrumented, monkeypatch, slice_elements):
    telemetry = instrumented(capture_mode="full")
    whole = _step_values(telemetry, monkeypatch, 1 << 40)
    sliced = _step_values(telemetry, monkeypatch, slice_elements)
    assert sliced.keys() == whole.keys()
    for name, value in whole.items():
        assert sliced[name] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), name
