"""Prompt analysis: basin scores (uniform attention = 1.0), sparse attention, chunking that bounds memory,
and the real prefill/encoder pass compared with independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from corevital_otel.capture.records import AttentionInputs, PromptCapture
from corevital_otel.plugins import prompt as prompt_plugin
from corevital_otel.plugins._profiles import load_profile
from tests.support.plugin_testing import array_of, decoder_layers, llama
from tests.support.tiny_models import build_model, prompt_batch

THRESHOLDS = load_profile("default")

SURPRISAL_ON = {"prompt": {"surprisal": True}}  # per-position prompt surprisal is opt-in


def make_prompt(
    real: torch.Tensor,
    layers: int = 2,
    heads: int = 4,
    causal: bool = True,
    scale: float = 1.0,
    seed: int = 0,
):
    """A PromptCapture over random queries/keys; ``real`` ``(prompts, length)`` marks real tokens."""
    generator = torch.Generator().manual_seed(seed)
    prompts, length = real.shape
    allowed = real[:, None, None, :].expand(prompts, 1, length, length)
    if causal:
        allowed = allowed & torch.ones(length, length, dtype=torch.bool).tril()
    inputs = {
        layer: AttentionInputs(
            query=scale * torch.randn(prompts, heads, length, 8, generator=generator),
            key=torch.randn(prompts, 2, length, 8, generator=generator),
            mask=allowed,
            scaling=None,
        )
        for layer in range(layers)
    }
    return PromptCapture(
        input_ids=torch.randint(3, 90, (prompts, length), generator=generator),
        attention_mask=real.long(),
        is_encoder=not causal,
        hidden_states=[torch.randn(prompts, length, 16, generator=generator) for _ in range(layers)],
        attention_inputs=inputs,
    )


def reference_basin(
    weights: np.ndarray, real: np.ndarray, causal: bool, queries: range | None = None
) -> np.ndarray:
    """Per (prompt, head), straight from the definition, one query at a time (over ``queries``)."""
    prompts, heads, length, _ = weights.shape
    scores = np.full((prompts, heads), np.nan)
    for p in range(prompts):
        for h in range(heads):
            middle = boundary = uniform_middle = uniform_boundary = 0.0
            for q in range(length) if queries is None else queries:
                visible = [k for k in range(length) if real[p, k] and (not causal or k <= q)]
                if not real[p, q] or len(visible) < 3:
                    continue
                n = len(visible)
                centre = visible[n // 3 : 2 * n // 3]
                middle += sum(weights[p, h, q, k] for k in centre)
                boundary += sum(weights[p, h, q, k] for k in visible if k not in centre)
                uniform_middle += len(centre) / n
                uniform_boundary += 1 - len(centre) / n
            if uniform_middle:
                scores[p, h] = (middle / boundary) / (uniform_middle / uniform_boundary)
    return scores


def left_padding(lengths: list[int], width: int) -> torch.Tensor:
    return torch.tensor([[column >= width - length for column in range(width)] for length in lengths])


@pytest.mark.parametrize("causal", [True, False])
def test_uniform_attention_scores_exactly_one_under_any_mask(causal):
    capture = make_prompt(left_padding([9, 6, 4], 9), causal=causal, scale=0.0)  # zero queries: uniform
    rows = prompt_plugin.prompt_rows(capture)
    for layer in range(2):
        torch.testing.assert_close(
            prompt_plugin.layer_attention(capture, layer, rows, None), torch.ones(3, 4)
        )


def test_a_head_that_ignores_the_middle_scores_near_zero_and_one_that_stares_at_it_above_one():
    capture = make_prompt(left_padding([12], 12), causal=False, scale=0.0)
    keys = capture.attention_inputs[0].key
    keys.zero_()
    keys[..., 0] = torch.tensor([100.0 if k in (0, 11) else -100.0 for k in range(12)])  # boundary keys only
    capture.attention_inputs[0].query[..., 0] = 1.0
    rows = prompt_plugin.prompt_rows(capture)
    assert prompt_plugin.layer_attention(capture, 0, rows, None).max() < 1e-3
    keys[..., 0] = torch.tensor([100.0 if 4 <= k < 8 else -100.0 for k in range(12)])  # the middle third
    assert prompt_plugin.layer_attention(capture, 0, rows, None).min() > 1.5


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.integers(1, 10), min_size=1, max_size=3),
    st.booleans(),
    st.sampled_from([0.3, 3.0]),
    st.integers(0, 999),
)
def test_basin_matches_the_definition_on_random_attention(lengths, causal, scale, seed):
    width = max(lengths)
    capture = make_prompt(left_padding(lengths, width), layers=1, causal=causal, scale=scale, seed=seed)
    rows = prompt_plugin.prompt_rows(capture)
    got = prompt_plugin.layer_attention(capture, 0, rows, None).numpy()
    expected = reference_basin(capture.attention_weights(0).numpy(), rows.real.numpy(), causal)
    # float32 prefix sums: a basin score near 0 may be off by ~1e-7 in absolute terms.
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize(("length", "budget"), [(40, 8), (41, 10), (12, 100)])
def test_long_prompts_use_evenly_spaced_queries(length, budget):
    queries = prompt_plugin.sampled_queries(length, budget)
    assert len(queries) <= budget and queries[-1] == length - 1
    assert len(set(queries.step for _ in queries)) == 1 and (budget >= length) == (queries.step == 1)
    capture = make_prompt(
        left_padding([length, length - 5], length), layers=1, causal=True, scale=3.0, seed=2
    )
    rows = prompt_plugin.prompt_rows(capture)
    got = prompt_plugin.layer_attention(capture, 0, rows, None, queries=queries).numpy()
    weights = capture.attention_weights(0).numpy()
    expected = reference_basin(weights, rows.real.numpy(), True, queries)
    np.testing.assert_allclose(got, expected, rtol=1e-4, equal_nan=True)
    sampled = prompt_plugin.measure(capture, THRESHOLDS, detail=True, attention_queries=budget)
    values = prompt_plugin.attributes(sampled, detail=True)
    assert values["corevital.prompt.attention_queries"] == len(queries)
    kept = values["corevital.prompt.positions.attention.query"].tolist()
    assert kept and set(kept) <= set(queries)  # sparse weights come from the sampled queries only


# 10 x 10 weights per head are searched a query row at a time; 16 x 16 in runs spanning several rows.
@pytest.mark.parametrize("lengths", [[10, 7], [16, 11]])
def test_sparse_attention_keeps_the_largest_weights_above_the_threshold_per_head(lengths):
    capture = make_prompt(left_padding(lengths, lengths[0]), layers=2, scale=3.0, seed=5)
    values = prompt_plugin.analyse(capture, THRESHOLDS, detail=True)
    prefix = "corevital.prompt.positions.attention"
    kept = list(
        zip(
            *(values[f"{prefix}.{name}"].tolist() for name in ("prompt", "layer", "head", "query", "key")),
            strict=True,
        )
    )
    assert kept == sorted(kept)
    expected, dropped = [], 0
    for layer in range(2):
        weights = capture.attention_weights(layer).numpy()
        for p in range(2):
            for h in range(4):
                above = [
                    (w, q, k)
                    for (q, k), w in np.ndenumerate(weights[p, h])
                    if w > THRESHOLDS.prompt_sparse_threshold
                ]
                above.sort(reverse=True)
                top = above[: THRESHOLDS.prompt_sparse_max_per_head]
                dropped += len(above) - len(top)
                expected += [((p, layer, h, q, k), w) for w, q, k in top]
    # Over all prompts, layers and heads only the largest SPARSE_MAX_TOTAL stay on the span.
    expected.sort(key=lambda item: -item[1])
    dropped += max(len(expected) - prompt_plugin.SPARSE_MAX_TOTAL, 0)
    expected = sorted(expected[: prompt_plugin.SPARSE_MAX_TOTAL])
    assert kept == [key for key, _ in expected]
    np.testing.assert_allclose(values[f"{prefix}.weight"], [w for _, w in expected], rtol=1e-6)
    assert values[f"{prefix}.dropped"] == dropped > 0


def test_chunking_bounds_memory_and_changes_nothing(monkeypatch):
    capture = make_prompt(left_padding([16, 11], 16), layers=2, scale=2.0, seed=3)
    whole = prompt_plugin.analyse(capture, THRESHOLDS, detail=True)
    sizes: list[int] = []
    original = capture.attention_weights

    def recording(layer, queries=None):
        weights = original(layer, queries)
        sizes.append(weights.numel())
        return weights

    capture.attention_weights = recording  # type: ignore[method-assign]
    budget = 2 * 2 * 4 * 16  # two queries of every prompt and head at a time
    monkeypatch.setattr(prompt_plugin, "CHUNK_ELEMENTS", budget)
    chunked = prompt_plugin.analyse(capture, THRESHOLDS, detail=True)
    assert max(sizes) <= budget and len(sizes) == 2 * 8
    assert whole.keys() == chunked.keys()
    for name, value in whole.items():
        np.testing.assert_allclose(
            np.asarray(chunked[name], float), np.asarray(value, float), rtol=1e-5, err_msg=name
        )


def _recorder(outputs: list[torch.Tensor]):
    return lambda module, args, output: outputs.append(output[0])


def test_prompt_surprisal_and_layer_transformation_match_an_independent_forward(instrumented):
    """The plugin reuses the prefill pass; the test runs its own forward pass and compares."""
    telemetry = instrumented(capture_mode="full", plugin_options=SURPRISAL_ON)
    model = llama(layers=3)
    ids, mask = prompt_batch(batch=2, length=7, pad_first=2)
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False)
    attributes = dict(telemetry.generation_spans()[-1].attributes)
    assert attributes["corevital.prompt.shape"] == (2, 3, 4, 7)
    surprisal = array_of(attributes, "corevital.prompt.positions.surprisal", 2, 7)
    transformation = array_of(attributes, "corevital.prompt.positions.layer_transformation", 2, 3, 7)
    for row, length in ((0, 7), (1, 5)):  # each prompt alone, unpadded
        outputs: list[torch.Tensor] = []
        handles = [layer.register_forward_hook(_recorder(outputs)) for layer in decoder_layers(model)]
        with torch.no_grad():
            logits = model(input_ids=ids[row : row + 1, 7 - length :]).logits[0].double()
        for handle in handles:
            handle.remove()
        log_probs = torch.log_softmax(logits[:-1], dim=-1)
        expected = -log_probs.gather(-1, ids[row, 8 - length :, None]).squeeze(-1) / np.log(2)
        np.testing.assert_allclose(surprisal[row, 8 - length :], expected.numpy(), rtol=1e-3, atol=1e-4)
        assert np.isnan(surprisal[row, : 8 - length]).all()  # padding and the first real token
        for layer in (1, 2):
            cosine = torch.nn.functional.cosine_similarity(outputs[layer - 1], outputs[layer], dim=-1)
            np.testing.assert_allclose(
                transformation[row, layer, 7 - length :], (1 - cosine).numpy(), rtol=1e-3, atol=1e-5
            )
        assert np.isnan(transformation[row, 0]).all()
    basin = array_of(attributes, "corevital.layers.prompt.basin_score", 2, 3, 4)
    np.testing.assert_allclose(
        array_of(attributes, "corevital.prompt.basin_score.min"), np.nanmin(basin, axis=(1, 2))
    )


@pytest.mark.parametrize("causal", [True, False])
def test_without_a_padding_mask_the_prompt_gets_what_an_explicit_mask_gives(causal):
    """transformers passes no mask when every token is real (the model's kernel is told is_causal):
    the weights then need no masking of their own, and every prompt value is what the explicit mask
    gives."""
    capture = make_prompt(torch.ones(2, 9, dtype=torch.bool), causal=causal, scale=3.0, seed=7)
    explicit = prompt_plugin.analyse(capture, THRESHOLDS, detail=True)
    for inputs in capture.attention_inputs.values():
        inputs.mask, inputs.is_causal = None, causal
    implicit = prompt_plugin.analyse(capture, THRESHOLDS, detail=True)
    assert explicit.keys() == implicit.keys()
    for name, value in explicit.items():
        np.testing.assert_allclose(np.asarray(implicit[name]), np.asarray(value), rtol=1e-6, err_msg=name)


def test_padded_prompt_gets_the_metrics_of_the_same_prompt_unpadded(instrumented):
    telemetry = instrumented(capture_mode="full", plugin_options=SURPRISAL_ON)
    model = build_model("llama")
    ids, mask = prompt_batch(batch=2, length=8, pad_first=3)
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1, do_sample=False)
    batch = dict(telemetry.generation_spans()[-1].attributes)
    model.generate(input_ids=ids[1:, 3:], max_new_tokens=1, do_sample=False)
    alone = dict(telemetry.generation_spans()[-1].attributes)
    for name in (
        "corevital.prompt.surprisal.mean",
        "corevital.prompt.basin_score.mean",
        "corevital.prompt.layer_transformation.mean",
    ):
        assert array_of(batch, name)[1] == pytest.approx(array_of(alone, name)[0], rel=1e-3), name
    np.testing.assert_allclose(
        array_of(batch, "corevital.layers.prompt.basin_score", 2, 2, 4)[1],
        array_of(alone, "corevital.layers.prompt.basin_score", 1, 2, 4)[0],
        rtol=1e-3,
    )


def test_encoder_prompt_of_a_seq2seq_model(instrumented):
    telemetry = instrumented(capture_mode="summary")
    model = build_model("t5")
    ids, mask = prompt_batch(batch=2)
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, num_beams=2, num_return_sequences=2)
    attributes = dict(telemetry.generation_spans()[-1].attributes)
    assert attributes["corevital.prompt.shape"] == (2, 2, 4, 6)  # per prompt, not per beam
    assert len(attributes["corevital.prompt.basin_score.mean"]) == 2
    assert "corevital.prompt.surprisal.mean" not in attributes  # an encoder predicts no next token
    assert not any(
        name.startswith(("corevital.prompt.positions.", "corevital.layers.")) for name in attributes
    )


def test_return_sequences_copies_are_reported_once_per_prompt(instrumented):
    telemetry = instrumented(capture_mode="summary", plugin_options=SURPRISAL_ON)
    ids, mask = prompt_batch(batch=2)
    build_model("gpt2").generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=True, num_return_sequences=3
    )
    attributes = dict(telemetry.generation_spans()[-1].attributes)
    assert attributes["corevital.prompt.shape"][0] == 2
    assert len(attributes["corevital.prompt.surprisal.mean"]) == 2


def test_prompts_longer_than_the_limit_are_skipped(instrumented):
    telemetry = instrumented(capture_mode="full", prompt_max_tokens=4)
    ids, mask = prompt_batch(batch=1, length=6)
    build_model("llama").generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False)
    attributes = dict(telemetry.generation_spans()[-1].attributes)
    analysed = ("shape", "surprisal", "basin_score", "layer_transformation", "positions")
    assert not [
        name for name in attributes if name.startswith(tuple(f"corevital.prompt.{n}" for n in analysed))
    ]
    assert "corevital.capture.lost" not in attributes


def test_prompt_surprisal_is_off_unless_asked_for(instrumented):
    telemetry = instrumented(capture_mode="full")
    ids, mask = prompt_batch(batch=1, length=7)
    llama(layers=2).generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False)
    (span,) = telemetry.generation_spans()
    attributes = span.attributes
    assert "corevital.prompt.surprisal.mean" not in attributes
    assert "corevital.prompt.positions.surprisal" not in attributes
    assert "corevital.prompt.layer_transformation.mean" in attributes  # the rest of the analysis runs
