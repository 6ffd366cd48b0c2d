"""Hidden-state metrics against a per-vector reference, NaN/Inf presence, and capture-mode gating."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from corevital_otel.plugins.hidden_states import hidden_step_values
from tests.support.plugin_testing import array_of, llama


def reference(vector: np.ndarray) -> dict[str, float]:
    size = vector.size
    mean = sum(vector) / size
    return {
        "l2_norm": math.sqrt(sum(x * x for x in vector)),
        "mean": mean,
        "std": math.sqrt(sum((x - mean) ** 2 for x in vector) / size),
        "max_abs": max(abs(x) for x in vector),
    }


@settings(max_examples=50, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(1, 3),
    st.integers(1, 24),
    st.sampled_from([1e-3, 1.0, 300.0]),
    st.integers(0, 2**31 - 1),
)
def test_per_layer_statistics_match_a_reference(layers, rows, dim, scale, seed):
    hidden = np.random.default_rng(seed).normal(0.3, scale, (layers, rows, dim))
    values = hidden_step_values(torch.tensor(hidden, dtype=torch.float32), detail=True)
    for layer in range(layers):
        for row in range(rows):
            expected = reference(hidden[layer, row])
            for name, value in expected.items():
                got = values[f"hidden_states.layers.{name}"][row, layer].item()
                assert got == pytest.approx(
                    value, rel=1e-4, abs=1e-6 * (1.0 + scale)
                )  # float32 rounding of values near 0.3, name
    l2 = np.linalg.norm(hidden, axis=-1)
    np.testing.assert_allclose(values["hidden_states.l2_norm.last"].numpy(), l2[-1], rtol=1e-5)
    np.testing.assert_allclose(values["hidden_states.l2_norm.max"].numpy(), l2.max(0), rtol=1e-5)


def test_non_finite_states_give_what_torch_std_and_abs_max_give():
    hidden = torch.randn(5, 1, 6)
    hidden[0, 0, 2] = float("nan")
    hidden[1, 0, 3] = float("inf")
    hidden[2, 0, 1] = float("-inf")
    hidden[3, 0, 0], hidden[3, 0, 4] = float("inf"), float("-inf")
    values = hidden_step_values(hidden, detail=True)
    torch.testing.assert_close(
        values["hidden_states.layers.std"].T, hidden.std(dim=-1, correction=0), equal_nan=True
    )
    max_abs = values["hidden_states.layers.max_abs"].T
    torch.testing.assert_close(max_abs, hidden.abs().amax(dim=-1), equal_nan=True)


def test_summary_mode_skips_descriptive_statistics():
    values = hidden_step_values(torch.randn(3, 2, 8), detail=False)
    assert set(values) == {
        "hidden_states.l2_norm.last",
        "hidden_states.l2_norm.max",
        "hidden_states.layers.l2_norm",
    }


def test_per_layer_attributes_equal_the_step_mean_of_each_layer(instrumented):
    telemetry = instrumented(capture_mode="full")
    model = llama(layers=3)
    outputs: list[torch.Tensor] = []
    handles = [
        layer.register_forward_hook(
            lambda module, args, output: outputs.append(output[:, -1].detach().clone())
        )
        for layer in model.model.layers
    ]
    try:
        model.generate(input_ids=torch.randint(3, 90, (1, 7)), max_new_tokens=5, do_sample=False)
    finally:
        for handle in handles:
            handle.remove()
    attributes = dict(telemetry.generation_spans()[-1].attributes)
    states = torch.stack(outputs).reshape(5, 3, -1)  # (steps, layers, dim), one row
    l2 = states.norm(dim=-1)
    np.testing.assert_allclose(
        array_of(attributes, "corevital.layers.hidden_states.l2_norm.mean"), l2.mean(0).numpy(), rtol=1e-5
    )
    np.testing.assert_allclose(
        array_of(attributes, "corevital.layers.hidden_states.max_abs"),
        states.abs().amax((0, 2)).numpy(),
        rtol=1e-5,
    )
