"""Logit metrics: a straightforward float64 reference on random logits, NaN/Inf handling, and the real
pipeline under a sampler that changes the distribution (temperature, top-k)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from corevital_otel.plugins.logits import logit_statistics
from tests.support.plugin_testing import hook_outputs, series_of
from tests.support.tiny_models import build_model, prompt_batch


def reference(row: np.ndarray, chosen: int) -> dict[str, float]:
    """Textbook definitions, one row at a time, in float64."""
    allowed = np.isfinite(row)
    shifted = np.where(allowed, row - row[allowed].max(), -np.inf)
    weights = np.exp(shifted)
    probs = weights / weights.sum()
    entropy = -sum(p * math.log2(p) for p in probs if p > 0)
    ranked = np.sort(probs)[::-1]
    return {
        "logits.entropy": entropy,
        "logits.perplexity": 2.0**entropy,
        "logits.surprisal": -math.log2(probs[chosen]),
        "logits.margin": ranked[0] - (ranked[1] if ranked.size > 1 else 0.0),
        "logits.top10_mass": ranked[:10].sum(),
        "logits.max_probability": ranked[0],
    }


@st.composite
def logit_rows(draw):
    rows = draw(st.integers(1, 3))
    vocab = draw(st.integers(2, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, draw(st.sampled_from([0.1, 3.0, 20.0])), (rows, vocab))
    masked = rng.random((rows, vocab)) < draw(st.sampled_from([0.0, 0.5, 0.9]))
    masked[:, 0] = False  # at least one allowed token per row
    logits[masked] = -np.inf
    chosen = [int(rng.choice(np.flatnonzero(~masked[row]))) for row in range(rows)]
    return logits, chosen


@settings(max_examples=60, deadline=None)
@given(logit_rows())
def test_every_statistic_matches_a_float64_reference(case):
    logits, chosen = case
    values = logit_statistics(torch.tensor(logits, dtype=torch.float32), torch.tensor(chosen))
    for row in range(logits.shape[0]):
        expected = reference(logits[row], chosen[row])
        for name, value in expected.items():
            assert values[name][row].item() == pytest.approx(value, rel=1e-4, abs=1e-4), name


def test_a_nan_logit_makes_its_row_null_never_confident_and_spares_other_rows():
    logits = torch.randn(3, 16)
    logits[1, 5] = float("nan")
    logits[2, 7] = float("inf")
    values = logit_statistics(logits, torch.tensor([0, 0, 0]))
    for name in ("logits.entropy", "logits.surprisal", "logits.max_probability", "logits.margin"):
        assert math.isnan(values[name][1].item()), name  # not 0 bits: a NaN row must not look certain
        assert math.isnan(values[name][2].item()), name
        assert math.isfinite(values[name][0].item()), name


def test_a_single_allowed_token_has_zero_entropy_and_no_nan():
    logits = torch.full((1, 8), float("-inf"))
    logits[0, 3] = 2.0
    values = logit_statistics(logits, torch.tensor([3]))
    assert values["logits.entropy"].item() == 0.0
    assert values["logits.surprisal"].item() == 0.0
    assert values["logits.margin"].item() == 1.0


def test_surprisal_is_nan_when_the_chosen_token_is_unknown():
    values = logit_statistics(torch.randn(2, 8), None)
    assert torch.isnan(values["logits.surprisal"]).all()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_sampled_generation_reports_the_raw_distribution_not_the_samplers(instrumented, family):
    """do_sample, temperature 0.7, top_k 50: entropy and surprisal equal values computed independently from
    the raw logits of the same step, and differ from the sampler-processed scores."""
    telemetry = instrumented(capture_mode="full")
    model = build_model(family)
    ids, mask = prompt_batch(batch=2)
    raw, handle = hook_outputs(model, lambda output: output.logits[:, -1].float())
    torch.manual_seed(3)
    try:
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=6,
            do_sample=True,
            temperature=0.7,
            top_k=50,
            output_scores=True,
            return_dict_in_generate=True,
        )
    finally:
        handle.remove()
    attributes = dict(telemetry.generation_spans()[-1].attributes)
    entropy = series_of(attributes, "logits.entropy", 2)
    surprisal = series_of(attributes, "logits.surprisal", 2)
    chosen = out.sequences[:, ids.shape[1] :]
    assert len(raw) == chosen.shape[1] == entropy.shape[1] == 6
    for step, logits in enumerate(raw):
        log_probs = torch.log_softmax(logits.double(), dim=-1)
        expected_entropy = -(log_probs.exp() * log_probs).sum(-1) / math.log(2)
        expected_surprisal = -log_probs.gather(-1, chosen[:, step : step + 1]).squeeze(-1) / math.log(2)
        np.testing.assert_allclose(entropy[:, step], expected_entropy.numpy(), rtol=1e-4)
        np.testing.assert_allclose(surprisal[:, step], expected_surprisal.numpy(), rtol=1e-4)
        # The processed scores (temperature, top-k) describe another distribution: the check can fail.
        processed = torch.log_softmax(out.scores[step].double(), dim=-1)
        processed_entropy = -(processed.exp() * processed.nan_to_num(neginf=0)).sum(-1) / math.log(2)
        assert not np.allclose(entropy[:, step], processed_entropy.numpy(), rtol=1e-3)


@pytest.mark.parametrize("vocab", [7, 5120, 5121, 50_257])
def test_largest_values_equal_a_full_top_k(vocab):
    from corevital_otel.plugins.logits import largest_values

    torch.manual_seed(vocab)
    values = torch.randn(3, 2, vocab) * 4
    values[0, 0, : vocab // 2] = float("-inf")  # a masked half
    values[1, 1] = values[1, 1].round()  # many ties
    expected = values.topk(min(10, vocab), dim=-1).values
    assert torch.equal(largest_values(values, min(10, vocab)), expected)
    values[2, 0, vocab // 3] = float("nan")  # a NaN anywhere makes the largest value NaN
    assert largest_values(values, min(10, vocab))[2, 0, 0].isnan()
