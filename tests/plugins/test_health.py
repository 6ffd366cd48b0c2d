"""Health flags through the real pipeline: NaN/Inf injected into one layer, a mid-layer explosion, the
high-entropy count, the flags metric, profiles, and flags left out when their inputs were not captured."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from corevital_otel import ConfigError, StepCapture
from corevital_otel.plugins import health
from corevital_otel.plugins._profiles import load_profile
from tests.support.plugin_testing import corrupt_layer, llama, non_finite_numbers, series_of, step_series
from tests.support.tiny_models import build_model, prompt_batch

FLAGS = (
    "nan_detected",
    "inf_detected",
    "attention_collapse_detected",
    "high_entropy_steps",
    "repetition_loop_detected",
    "mid_layer_anomaly_detected",
)


def generate(telemetry, model, **kwargs):
    ids, mask = prompt_batch(batch=2)
    model.generate(input_ids=ids, attention_mask=mask, do_sample=False, **{"max_new_tokens": 6, **kwargs})
    return telemetry.generation_spans()[-1]


def corrupted(telemetry, layers: int, **corruption):
    """The span of a generation by a ``layers``-deep Llama with one layer corrupted (``corrupt_layer``)."""
    model = llama(layers=layers)
    with corrupt_layer(model, **corruption):
        return generate(telemetry, model)


def flag_counts(telemetry) -> dict[str, int]:
    counts: dict[str, int] = {}
    for point in telemetry.metrics().get("corevital.health.flags", []):
        name = point.attributes["corevital.health.flag"]
        counts[name] = counts.get(name, 0) + point.value
    return counts


def assert_exportable(span) -> None:
    """No attribute or event value is a non-finite number, and the span serialises to JSON and OTLP."""
    for name, value in span.attributes.items():
        assert not non_finite_numbers(value), name
    for event in span.events:
        for name, value in event.attributes.items():
            assert not non_finite_numbers(value), f"{event.name}: {name}"
    json.dumps(
        {name: list(v) if isinstance(v, tuple) else v for name, v in span.attributes.items()}, allow_nan=False
    )
    assert encode_spans([span]).SerializeToString()


def test_step_evidence_of_nan_and_inf_per_layer_row_and_source():
    hidden = torch.randn(3, 2, 8)
    hidden[1, 0, 4] = float("nan")
    attention = torch.softmax(torch.randn(3, 2, 4, 5), dim=-1)
    attention[2, 1, 3, 0] = float("nan")
    logits = torch.randn(2, 10)
    logits[1, 3] = float("inf")
    logits[0, 2] = float("-inf")  # a mask, not an overflow
    step = StepCapture(0, 2, logits, hidden, attention, torch.full((3, 2), 5), None)
    values = health.nonfinite_step_values(step)
    assert values["health.layers.nan"].tolist() == [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    assert values["health.layers.inf"].tolist() == [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert values["health.logits_nonfinite"].tolist() == [[0.0, 0.0], [0.0, 1.0]]
    assert values["health.nonfinite"].tolist() == [1.0, 1.0]
    clean = StepCapture(1, 2, torch.randn(2, 10), torch.randn(3, 2, 8), None, None, None)
    assert health.nonfinite_step_values(clean)["health.nonfinite"].tolist() == [0.0, 0.0]


def test_a_positive_infinite_logit_is_found_beside_a_nan_or_alone():
    # Without a NaN the largest logit tells whether a row holds +inf; a NaN hides it, so those rows are
    # searched: both ways must give the same evidence.
    logits = torch.randn(4, 10)
    logits[0, 1], logits[0, 5] = float("nan"), float("inf")
    logits[1, 2] = float("nan")
    logits[2, 7] = float("inf")
    logits[3, 0] = float("-inf")  # a mask, not an overflow
    step = StepCapture(0, 4, logits, None, None, None, None)
    values = health.nonfinite_step_values(step)
    assert values["health.logits_nonfinite"].tolist() == [[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
    without_nan = StepCapture(0, 2, logits[2:], None, None, None, None)
    assert health.nonfinite_step_values(without_nan)["health.logits_nonfinite"].tolist() == [
        [0.0, 1.0],
        [0.0, 0.0],
    ]


def test_nan_in_one_layer_is_detected_named_and_exported_safely(instrumented):
    telemetry = instrumented(capture_mode="full")
    span = corrupted(telemetry, 4, layer=2, value=float("nan"), from_call=3)
    attributes = dict(span.attributes)
    assert attributes["corevital.health.nan_detected"] is True
    assert attributes["corevital.health.per_row.nan_detected"] == (True, True)
    # Layer 2 is where it appeared; the layers below it stayed clean (the ones above inherit it).
    assert min(attributes["corevital.health.layers.nan_detected"]) == 2
    assert attributes["corevital.health.first_step.nan_detected"] == 3
    assert "corevital.capture.lost" not in attributes  # no plugin failed on the NaN
    assert attributes["corevital.layers.health.nan"] == (False, False, True, True) * 2
    reasons = {
        event.attributes["corevital.step.index"]: event.attributes.get("corevital.step.reasons")
        for event in span.events
    }
    assert "nan_detected" in reasons[3]
    assert flag_counts(telemetry)["nan_detected"] == 2
    entropy = series_of(attributes, "logits.entropy", 2)
    assert np.isfinite(entropy[:, :3]).all() and np.isnan(entropy[:, 3:]).all()  # null, never "0 bits"
    assert_exportable(span)
    risk = attributes.get("corevital.risk.score")
    if risk is not None:  # the risk plugin (issue 3) must not call a NaN run low-risk
        assert min(value for value in np.atleast_1d(risk) if value is not None) >= 0.5


def test_nan_in_one_row_leaves_the_other_row_clean(instrumented):
    telemetry = instrumented(capture_mode="summary")
    span = corrupted(telemetry, 3, layer=1, value=float("nan"), from_call=2, rows=slice(0, 1))
    attributes = dict(span.attributes)
    assert attributes["corevital.health.per_row.nan_detected"] == (True, False)
    assert flag_counts(telemetry)["nan_detected"] == 1
    assert_exportable(span)


def test_inf_in_a_hidden_state_sets_inf_detected(instrumented):
    telemetry = instrumented(capture_mode="full")
    span = corrupted(telemetry, 3, layer=0, value=float("inf"), from_call=1)
    attributes = dict(span.attributes)
    assert attributes["corevital.health.inf_detected"] is True
    assert 0 in attributes["corevital.health.layers.inf_detected"]
    assert_exportable(span)


def test_clean_generation_raises_no_nonfinite_flag(instrumented):
    telemetry = instrumented(capture_mode="full")
    attributes = dict(generate(telemetry, llama(layers=3)).attributes)
    for flag in ("nan_detected", "inf_detected", "mid_layer_anomaly_detected"):
        assert attributes[f"corevital.health.{flag}"] is False, flag
        assert f"corevital.health.layers.{flag}" not in attributes
    assert attributes["corevital.health.profile"] == "llama"


def test_mid_layer_explosion_is_flagged_relative_to_the_early_layers(instrumented):
    """Six layers: early = 0-1, middle = 2-3. Scaling layer 2's output 1000x from step 2 on is an explosion
    of the middle third; the same scaling of layer 0 raises the baseline instead and is not."""
    telemetry = instrumented(capture_mode="full")
    attributes = dict(corrupted(telemetry, 6, layer=2, value=1000.0, from_call=2).attributes)
    assert attributes["corevital.health.mid_layer_anomaly_detected"] is True
    assert attributes["corevital.health.first_step.mid_layer_anomaly_detected"] == 2
    assert set(attributes["corevital.health.layers.mid_layer_anomaly_detected"]) <= {2, 3}
    attributes = dict(corrupted(telemetry, 6, layer=0, value=1000.0, from_call=2).attributes)
    assert attributes["corevital.health.mid_layer_anomaly_detected"] is False


def test_mid_layer_flag_uses_the_same_steps_baseline():
    """A middle layer 9x its own step's early layers fires (llama ratio 12 does not, default 8 does)."""
    l2 = np.ones((4, 1, 6))
    l2[2, 0, 3] = 9.0
    series = step_series({"hidden_states.layers.l2_norm": l2}, steps=4, rows=1)
    assert health.mid_layer_flag(series, load_profile("default")).first_step == 2
    assert not health.mid_layer_flag(series, load_profile("llama")).rows.any()
    l2[:, :, :2] = 100.0  # large early layers on every step: no explosion relative to them
    assert not health.mid_layer_flag(series, load_profile("default")).rows.any()


def test_high_entropy_steps_counts_real_steps_above_the_profile_threshold(instrumented):
    telemetry = instrumented(capture_mode="full")
    span = generate(telemetry, build_model("gpt2"), max_new_tokens=5)
    attributes = dict(span.attributes)
    entropy = series_of(attributes, "logits.entropy", 2)
    counts = (np.nan_to_num(entropy, nan=-1.0) > load_profile("gpt2").high_entropy_bits).sum(axis=1)
    steps = np.isfinite(entropy).sum(axis=1)
    # counted (and fired) only where at least half of the row's steps are high-entropy
    expected = np.where((counts > 0) & (counts >= 0.5 * steps), counts, 0)
    assert attributes["corevital.health.per_row.high_entropy_steps"] == tuple(expected.tolist())
    assert attributes["corevital.health.high_entropy_steps"] == expected.max()
    assert flag_counts(telemetry).get("high_entropy_steps", 0) == int((expected > 0).sum())
    flagged = [e for e in span.events if "high_entropy" in (e.attributes.get("corevital.step.reasons") or ())]
    fired = expected.max() > 0
    assert len(flagged) == (min(8, int((entropy.max(axis=0) > 4.0).sum())) if fired else 0)


def test_profile_override_changes_the_threshold(instrumented):
    telemetry = instrumented(
        capture_mode="summary", plugin_options={"profile": {"high_entropy_bits": 1000.0}}
    )
    attributes = dict(generate(telemetry, build_model("gpt2")).attributes)
    assert attributes["corevital.health.high_entropy_steps"] == 0
    assert "high_entropy_steps" not in flag_counts(telemetry)


def test_a_misspelt_threshold_is_refused_at_instrument_time_naming_the_allowed_ones(instrumented):
    with pytest.raises(
        ConfigError, match=r"plugin_options\['profile'\]: unknown option\(s\) high_entropy_bitz; "
    ):
        instrumented(plugin_options={"profile": {"high_entropy_bitz": 1.0}})
    with pytest.raises(ConfigError, match="allowed: family, .*high_entropy_bits"):
        instrumented(plugin_options={"profile": {"high_entropy_bitz": 1.0}})


def test_an_invalid_override_is_reported_not_silently_ignored(instrumented):
    telemetry = instrumented(
        capture_mode="summary", plugin_options={"profile": {"high_entropy_bits": "high"}}
    )
    attributes = dict(generate(telemetry, build_model("gpt2")).attributes)
    assert any("health" in item for item in attributes["corevital.capture.lost"])
    assert "corevital.health.high_entropy_steps" not in attributes
    assert attributes["gen_ai.usage.output_tokens"] > 0  # the generation itself was not affected


def test_flags_whose_inputs_were_not_captured_are_left_out(instrumented):
    telemetry = instrumented(capture_mode="summary", capture_attention=False)
    attributes = dict(generate(telemetry, build_model("llama")).attributes)
    assert "corevital.health.attention_collapse_detected" not in attributes
    assert attributes["corevital.health.nan_detected"] is False  # hidden states and logits were looked at


@pytest.mark.parametrize("mask_last", [False, True])
def test_steps_after_a_rows_end_never_raise_its_flags(mask_last):
    """A NaN on a step after the row finished (padding) is not the row's."""
    nan = np.zeros((4, 2, 3))
    nan[3, 1, 1] = 1.0
    mask = np.ones((4, 2), bool)
    mask[3, 1] = not mask_last
    series = step_series({"health.layers.nan": nan}, steps=4, rows=2, mask=mask)
    flags = {flag.name: flag for flag in health.assess(series, load_profile("default"))}
    assert flags["nan_detected"].rows.tolist() == [False, not mask_last]


def test_assess_survives_all_nan_series():
    steps, rows, layers = 3, 2, 4
    arrays = {
        "logits.entropy": np.full((steps, rows), np.nan),
        "health.logits_nonfinite": np.stack([np.ones((steps, rows)), np.zeros((steps, rows))], axis=-1),
        "hidden_states.layers.l2_norm": np.full((steps, rows, layers), np.nan),
        "health.layers.nan": np.ones((steps, rows, layers)),
        "attention.layers.collapsed": np.zeros((steps, rows, layers)),
        "health.repetition": np.zeros((steps, rows)),
    }
    flags = {
        flag.name: flag for flag in health.assess(step_series(arrays, steps, rows), load_profile("default"))
    }
    assert flags["nan_detected"].rows.all() and flags["nan_detected"].first_step == 0
    assert flags["high_entropy_steps"].rows.tolist() == [0, 0]
    assert flags["mid_layer_anomaly_detected"].rows.all()  # NaN in the middle layers
    assert set(flags) == set(FLAGS)
    assert not flags["inf_detected"].rows.any()
    assert not math.isnan(float(flags["high_entropy_steps"].rows.sum()))


def test_a_few_uncertain_steps_do_not_fire_high_entropy_steps():
    """A healthy generation has some uncertain steps (a name, a number): under the profile's share of the
    row's steps they are not a flag; from that share on they are, with their count."""
    thresholds = load_profile("default")
    entropy = np.full((10, 2), 1.0)
    entropy[:4, 0] = 6.0  # row 0: 4 of 10 steps above 4 bits
    entropy[:5, 1] = 6.0  # row 1: 5 of 10
    flag = health.high_entropy_flag(step_series({"logits.entropy": entropy}, steps=10, rows=2), thresholds)
    assert flag is not None and flag.rows.tolist() == [0, 5]
