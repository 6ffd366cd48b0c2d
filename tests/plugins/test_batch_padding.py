"""A sequence's metrics do not depend on its batch: padded batch rows match single unpadded runs, and
steps after a row's EOS (padding) never enter its aggregates."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.plugin_testing import ForceTokens, array_of, series_of
from tests.support.tiny_models import SEQ2SEQ, build_model, prompt_batch

STEP_SERIES = (
    "logits.entropy",
    "logits.surprisal",
    "logits.margin",
    "attention.entropy.mean",
    "attention.entropy.min",
    "attention.concentration.max",
    "attention.collapsed_heads",
    "hidden_states.l2_norm.last",
    "hidden_states.l2_norm.max",
    "health.state_similarity",
)
LAYER_ATTRIBUTES = (
    "corevital.layers.attention.entropy.mean",
    "corevital.layers.attention.concentration.max",
    "corevital.layers.attention.normalized_entropy.mean",
    "corevital.layers.hidden_states.l2_norm.mean",
    "corevital.layers.hidden_states.std",
)
ROW_ATTRIBUTES = (
    "corevital.logits.entropy.mean",
    "corevital.logits.surprisal.mean",
    "corevital.attention.entropy.mean",
    "corevital.attention.concentration.max",
    "corevital.hidden_states.l2_norm.max",
    "corevital.health.per_row.high_entropy_steps",
)


def _run(telemetry, model, ids, mask, **kwargs):
    model.generate(input_ids=ids, attention_mask=mask, do_sample=False, **kwargs)
    return dict(telemetry.generation_spans()[-1].attributes)


@pytest.mark.parametrize("family", ["llama", "gpt2", "t5"])
def test_padded_batch_rows_match_single_unpadded_runs(instrumented, family):
    telemetry = instrumented(capture_mode="full")
    model = build_model(family)
    ids, mask = prompt_batch(batch=2, length=7, pad_first=3)
    batch = _run(telemetry, model, ids, mask, max_new_tokens=5, min_new_tokens=5)
    for row, start in ((0, 0), (1, 3)):
        alone = _run(telemetry, model, ids[row : row + 1, start:], None, max_new_tokens=5, min_new_tokens=5)
        for name in STEP_SERIES:
            np.testing.assert_allclose(
                series_of(batch, name, 2)[row],
                series_of(alone, name, 1)[0],
                rtol=2e-3,
                atol=1e-4,
                err_msg=name,
            )
        for name in LAYER_ATTRIBUTES:
            np.testing.assert_allclose(
                array_of(batch, name, 2, 2)[row], array_of(alone, name, 1, 2)[0], rtol=2e-3, err_msg=name
            )


@pytest.mark.parametrize("family", ["llama", "bart"])
def test_steps_after_eos_never_enter_a_rows_aggregates(instrumented, family):
    """Row 0 stops at step 2 (EOS); its aggregates equal those of a run that generated just those tokens."""
    telemetry = instrumented(capture_mode="full")
    model = build_model(family)
    eos = model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    ids, _ = prompt_batch(batch=2, length=6, pad_first=0)
    decoder_start = 1 if family in SEQ2SEQ else ids.shape[1]
    plan = [[11, 12, eos, 13, 14, 15], [21, 22, 23, 24, 25, 26]]
    batch = _run(
        telemetry, model, ids, None, max_new_tokens=6, logits_processor=[ForceTokens(plan, decoder_start)]
    )
    alone = _run(
        telemetry,
        model,
        ids[:1],
        None,
        max_new_tokens=6,
        logits_processor=[ForceTokens(plan[0], decoder_start)],
    )
    assert np.isnan(series_of(batch, "logits.entropy", 2)[0, 3:]).all()  # padding steps are null
    for name in ROW_ATTRIBUTES:
        single = name.replace(".per_row.", ".")  # one row: the generation's value is the row's
        assert array_of(batch, name)[0] == pytest.approx(array_of(alone, single)[0], rel=2e-3), name
    layers = 2
    for name in LAYER_ATTRIBUTES:
        np.testing.assert_allclose(
            array_of(batch, name, 2, layers)[0], array_of(alone, name, 1, layers)[0], rtol=2e-3, err_msg=name
        )


def test_eos_padding_tokens_are_not_a_repetition_loop(instrumented):
    """After EOS a finished row is fed the same pad token again and again; that is not a loop."""
    telemetry = instrumented(capture_mode="summary")
    model = build_model("llama")
    ids, _ = prompt_batch(batch=2, length=6, pad_first=0)
    plan = [[11, 2] + [0] * 14, list(range(30, 46))]
    attributes = _run(telemetry, model, ids, None, max_new_tokens=16, logits_processor=[ForceTokens(plan, 6)])
    assert attributes["corevital.health.per_row.repetition_loop_detected"] == (False, False)
