"""Attention metrics: a loop-by-loop reference on random rows with padding and ragged key counts, the
single-key rule, and collapse on a real model whose attention was made peaked."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from corevital_otel.plugins._profiles import load_profile
from corevital_otel.plugins.attention import (
    attention_step_values,
    head_statistics,
    logit_row_statistics,
    row_statistics,
)
from tests.support.plugin_testing import array_of, decoder_layers, llama

THRESHOLDS = load_profile("default")


@st.composite
def attention_rows(draw):
    """(layers, rows, heads, keys) softmax rows over each row's own keys: some padded keys (weight 0) at
    the front, zero fill beyond a layer's key count, and key counts from 1 upwards."""
    layers, rows, heads = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    width = draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    sharpness = draw(st.sampled_from([0.1, 2.0, 60.0]))
    weights = np.zeros((layers, rows, heads, width))
    counts = np.zeros((layers, rows), dtype=np.int64)
    for layer in range(layers):
        for row in range(rows):
            keys = int(rng.integers(1, width + 1))
            padding = int(rng.integers(0, width - keys + 1))
            scores = rng.normal(0, sharpness, (heads, keys))
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            weights[layer, row, :, padding : padding + keys] = probs / probs.sum(-1, keepdims=True)
            counts[layer, row] = keys
    return weights, counts


def reference_head(row: np.ndarray, keys: int) -> dict[str, float]:
    entropy = -sum(p * math.log2(p) for p in row if p > 0)
    normalized = entropy * math.log(2) / math.log(keys) if keys > 1 else math.nan
    concentration = float(row.max())
    return {
        "entropy": entropy,
        "normalized_entropy": normalized,
        "concentration": concentration,
        "collapsed": float(keys > 1 and normalized < THRESHOLDS.collapse_normalized_entropy),
        "focused": float(keys > 1 and concentration > THRESHOLDS.focus_max_weight),
    }


def as_logits(weights: torch.Tensor) -> torch.Tensor:
    """Logits whose softmax is ``weights``, shifted by a different amount per head (the statistics must
    not depend on it), the lowest float32 at a zero weight."""
    shift = torch.linspace(-30.0, 30.0, weights.shape[-2]).unsqueeze(-1)
    logits = weights.log() + shift
    return logits.masked_fill(weights == 0, torch.finfo(torch.float32).min)


@pytest.mark.parametrize("given_as", ["weights", "logits"])
@settings(max_examples=50, deadline=None)
@given(attention_rows())
def test_head_statistics_match_a_loop_reference(given_as, case):
    weights, counts = case
    probs = torch.tensor(weights, dtype=torch.float32)
    # As logits: what the capture hands over, the lowest float where a row may not attend.
    found = row_statistics(probs) if given_as == "weights" else logit_row_statistics(as_logits(probs))
    stats = head_statistics(found, torch.tensor(counts), THRESHOLDS)
    layers, rows, heads, _ = weights.shape
    for layer in range(layers):
        for row in range(rows):
            for head in range(heads):
                expected = reference_head(weights[layer, row, head], int(counts[layer, row]))
                for name, value in expected.items():
                    got = stats[name][layer, row, head].item()
                    if math.isnan(value):
                        assert math.isnan(got), name
                    else:
                        assert got == pytest.approx(value, rel=1e-4, abs=1e-5), name


@settings(max_examples=30, deadline=None)
@given(attention_rows())
def test_step_values_reduce_over_heads_and_layers_per_row(case):
    weights, counts = case
    values = attention_step_values(
        torch.tensor(weights, dtype=torch.float32), torch.tensor(counts), THRESHOLDS, True
    )
    layers, rows, heads, _ = weights.shape
    for row in range(rows):
        per_head = [
            [reference_head(weights[layer, row, head], int(counts[layer, row])) for head in range(heads)]
            for layer in range(layers)
        ]
        entropy = np.array([[h["entropy"] for h in layer] for layer in per_head])
        collapsed = np.array([[h["collapsed"] for h in layer] for layer in per_head])
        concentration = np.array([[h["concentration"] for h in layer] for layer in per_head])
        assert values["attention.entropy.mean"][row].item() == pytest.approx(
            entropy.mean(), rel=1e-4, abs=1e-5
        )
        assert values["attention.entropy.min"][row].item() == pytest.approx(entropy.min(), rel=1e-4, abs=1e-5)
        assert values["attention.concentration.max"][row].item() == pytest.approx(
            concentration.max(), rel=1e-5
        )
        assert values["attention.collapsed_heads"][row].item() == collapsed.sum()
        np.testing.assert_allclose(
            values["attention.layers.entropy.mean"][row].numpy(), entropy.mean(1), rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(
            values["attention.layers.entropy.max"][row].numpy(), entropy.max(1), rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(
            values["attention.layers.concentration.min"][row].numpy(), concentration.min(1), rtol=1e-5
        )
        np.testing.assert_array_equal(
            values["attention.layers.collapsed_heads"][row].numpy(), collapsed.sum(1)
        )
        needed = max(1, math.ceil(THRESHOLDS.collapse_head_fraction * heads))
        np.testing.assert_array_equal(
            values["attention.layers.collapsed"][row].numpy(), collapsed.sum(1) >= needed
        )


def test_a_single_key_row_is_neither_collapsed_nor_focused():
    weights = torch.zeros(1, 2, 4, 5)
    weights[0, 0, :, 0] = 1.0  # one key: no choice was made
    weights[0, 1, :, 2] = 1.0  # the same one-hot row among five keys: every head collapsed and focused
    values = attention_step_values(weights, torch.tensor([[1, 5]]), THRESHOLDS, True)
    assert values["attention.collapsed_heads"].tolist() == [0.0, 4.0]
    assert values["attention.focused_heads"].tolist() == [0.0, 4.0]
    assert values["attention.layers.collapsed"].tolist() == [[0.0], [1.0]]
    assert math.isnan(values["attention.layers.normalized_entropy.mean"][0, 0].item())


def test_padding_keys_do_not_change_a_rows_metrics():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(2, 1, 4, 6), dim=-1)
    padded = torch.zeros(2, 1, 4, 9)
    padded[..., 3:] = probs  # three padding keys in front, weight 0
    plain = attention_step_values(probs, torch.tensor([[6], [6]]), THRESHOLDS, True)
    shifted = attention_step_values(padded, torch.tensor([[6], [6]]), THRESHOLDS, True)
    for name, value in plain.items():
        torch.testing.assert_close(shifted[name], value, equal_nan=True)


def test_a_nan_attention_row_is_never_counted_as_collapsed():
    weights = torch.softmax(torch.randn(2, 1, 4, 5), dim=-1)
    weights[1, 0, :, :] = float("nan")
    values = attention_step_values(weights, torch.full((2, 1), 5), THRESHOLDS, False)
    assert values["attention.collapsed_heads"].tolist() == [0.0]
    assert values["attention.layers.collapsed"].tolist() == [[0.0, 0.0]]
    assert "attention.layers.entropy.min" not in values  # summary mode skips descriptive per-layer stats


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_nan_or_infinite_logit_makes_its_row_nan_as_its_weights_would_be(bad):
    logits = torch.randn(2, 3, 6)
    logits[1, 2, 4] = bad
    found = logit_row_statistics(logits)
    weights = row_statistics(torch.softmax(logits, dim=-1))
    for name in ("nats", "concentration"):
        assert torch.isnan(found[name]).tolist() == torch.isnan(weights[name]).tolist()
        assert torch.isnan(found[name]).sum().item() == 1, name
        torch.testing.assert_close(found[name], weights[name], equal_nan=True)


def test_collapse_on_a_real_model_names_the_peaked_layer(instrumented):
    """Scaling one layer's query projection makes its attention nearly one-hot: that layer is reported
    collapsed, the untouched one is not."""
    telemetry = instrumented(capture_mode="full")
    model = llama(layers=3)
    with torch.no_grad():
        attention = decoder_layers(model)[1].self_attn
        attention.q_proj.weight.mul_(100.0)
        attention.k_proj.weight.mul_(100.0)
    ids = torch.randint(3, 90, (1, 10), generator=torch.Generator().manual_seed(2))
    model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    attributes = dict(telemetry.generation_spans()[-1].attributes)
    collapsed = array_of(attributes, "corevital.layers.attention.collapsed_heads.max", 3)
    assert collapsed[1] >= 2 and collapsed[0] == 0 and collapsed[2] == 0
    assert attributes["corevital.health.attention_collapse_detected"] is True
    assert attributes["corevital.health.layers.attention_collapse_detected"] == (1,)


def test_generation_without_collapse_is_not_flagged(instrumented):
    telemetry = instrumented(capture_mode="summary")
    model = llama(layers=3)
    model.generate(input_ids=torch.randint(3, 90, (1, 10)), max_new_tokens=4, do_sample=False)
    attributes = dict(telemetry.generation_spans()[-1].attributes)
    assert attributes["corevital.health.attention_collapse_detected"] is False
    assert not any(name.startswith("corevital.layers.") for name in attributes)


def test_step_outputs_have_rows_first():
    values = attention_step_values(
        torch.softmax(torch.randn(2, 3, 4, 7), -1), torch.full((2, 3), 7), THRESHOLDS, True
    )
    for name, value in values.items():
        assert value.shape[0] == 3, name
        if name.startswith("attention.layers."):
            assert value.shape == (3, 2), name
