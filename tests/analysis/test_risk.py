"""The risk formula: NaN/Inf forces 1.0, flags set floors, continuous components add, capped, never
saturating on typical values; the on-device running risk agrees with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from corevital_otel.capture.records import StepBlock, StepCapture
from corevital_otel.plugins import _risk_features, _risk_model, risk
from corevital_otel.plugins._inputs import Flags
from corevital_otel.plugins._scales import FAMILY_SCALES, METRICS
from corevital_otel.plugins.logits import logit_statistics

from .helpers import default_scales, make_info, make_series, results_with

SCALES = default_scales()
STEPS = 12


def constant(**values: float) -> dict[str, np.ndarray]:
    return {metric: np.full(STEPS, value) for metric, value in values.items()}


TYPICAL = constant(**{m: FAMILY_SCALES["default"][m].typical for m in METRICS})
WORST = constant(**{m: FAMILY_SCALES["default"][m].bad for m in METRICS})


def sigmoid(value: float) -> float:
    return 1.0 / (1.0 + np.exp(-value))


def test_typical_values_score_the_default_intercept_and_name_no_factor():
    result = risk.row_risk(TYPICAL, Flags(), SCALES)
    assert result.score == pytest.approx(sigmoid(_risk_model.DEFAULT_INTERCEPT))
    assert result.factors == () and result.level == "low"


def test_worst_values_without_flags_are_high_but_below_one():
    result = risk.row_risk(WORST, Flags(), SCALES)
    assert 0.7 <= result.score < 1.0 and result.level == "high"
    assert result.factors[:3] == ("entropy", "line_entropy", "margin")  # by push towards risk


@pytest.mark.parametrize("flag", ["nan", "inf"])
def test_nonfinite_forces_one_whatever_the_series(flag):
    result = risk.row_risk(TYPICAL, Flags(**{flag: True}), SCALES)
    assert result.score == 1.0 and result.factors[0] == flag


def loop_from(onset: int, steps: int = STEPS, until: int | None = None) -> np.ndarray:
    repetition = np.zeros(steps)
    repetition[onset:until] = 1.0
    return repetition


def test_a_loop_is_graded_by_onset_and_coverage_never_floored():
    flags = Flags(repetition_loop=True)
    scores = [
        risk.row_risk(TYPICAL, flags, SCALES, repetition=loop_from(onset)).score for onset in range(STEPS)
    ]
    assert all(a > b for a, b in zip(scores, scores[1:], strict=False))  # earlier onset, higher risk
    assert scores[0] >= 0.7 and scores[-1] < 0.1  # whole row vs only its last step
    broken_off = risk.row_risk(TYPICAL, flags, SCALES, repetition=loop_from(0, until=STEPS // 2)).score
    assert scores[STEPS // 2] < broken_off < scores[0]  # same onset, half the coverage
    assert risk.row_risk(TYPICAL, flags, SCALES).score < scores[0]  # flag without its series: onset unknown


@settings(max_examples=200, deadline=None)
@given(
    values=st.fixed_dictionaries(
        {m: st.lists(st.floats(-1e6, 1e6) | st.just(np.nan), min_size=0, max_size=30) for m in METRICS}
    ),
    flags=st.fixed_dictionaries(
        {name: st.booleans() for name in ("repetition_loop", "mid_layer_anomaly", "attention_collapse")}
    ),
    onset=st.integers(0, 40),
)
def test_only_nan_or_inf_reaches_one(values, flags, onset):
    arrays = {metric: np.asarray(v, dtype=np.float64) for metric, v in values.items()}
    result = risk.row_risk(arrays, Flags(**flags), SCALES, repetition=loop_from(min(onset, 30), 30))
    assert 0.0 < result.score <= _risk_model.MAX_GRADED < 1.0


def test_mid_layer_anomaly_and_collapse_raise_the_score():
    base = risk.row_risk(TYPICAL, Flags(), SCALES).score
    collapse = risk.row_risk(TYPICAL, Flags(attention_collapse=True), SCALES).score
    mid = risk.row_risk(TYPICAL, Flags(mid_layer_anomaly=True), SCALES).score
    assert base < collapse < mid and risk.risk_level(mid) == "medium"


def test_rising_entropy_adds_the_trend_feature():
    rising = risk.row_risk({"entropy": np.linspace(2.0, 5.0, STEPS)}, Flags(), SCALES)
    index = _risk_features.NAMES.index("entropy_trend")
    assert rising.features[index] == pytest.approx(1.0)
    assert rising.features[0] == pytest.approx(0.5)  # mean scaled entropy
    falling = risk.row_risk({"entropy": np.linspace(5.0, 2.0, STEPS)}, Flags(), SCALES)
    assert falling.features[index] == pytest.approx(-1.0) and falling.score < rising.score


@pytest.mark.parametrize(
    "values",
    [
        {},  # no series published
        {"entropy": np.array([])},  # no step
        {"entropy": np.array([6.0])},  # single step: no trend
        {"entropy": np.full(STEPS, np.nan), "margin": np.full(STEPS, np.nan)},  # every step broken
    ],
)
def test_degenerate_series_never_raise(values):
    result = risk.row_risk(values, Flags(), SCALES)
    assert 0.0 < result.score < 1.0 and np.isfinite(result.features).all()
    assert result.features[_risk_features.NAMES.index("entropy_trend")] == 0.0


def test_nan_steps_are_skipped_not_propagated():
    values = {"entropy": np.array([5.0, np.nan, 5.0, np.inf])}
    assert risk.row_risk(values, Flags(), SCALES).features[0] == pytest.approx(1.0)


def test_very_long_series():
    values = {m: np.tile(v, 5000) for m, v in WORST.items()}
    assert risk.row_risk(values, Flags(), SCALES).score == pytest.approx(
        risk.row_risk(WORST, Flags(), SCALES).score
    )


@pytest.mark.parametrize(("score", "level"), [(0.0, "low"), (0.2999, "low"), (0.3, "medium"), (0.7, "high")])
def test_levels(score, level):
    assert risk.risk_level(score) == level


def test_step_risk_on_device_matches_the_host_components():
    torch.manual_seed(0)
    logits = torch.randn(3, 50) * torch.tensor([[0.5], [3.0], [8.0]])
    chosen = torch.tensor([1, 2, 3])
    on_device = risk.step_risk(logit_statistics(logits, chosen), SCALES, known_token=True)
    log_probs = torch.log_softmax(logits, -1)
    probs = log_probs.exp()
    top = probs.topk(10, -1).values
    for row in range(3):
        values = {
            "entropy": np.array([float(-(probs[row] * log_probs[row]).sum() / np.log(2))]),
            "margin": np.array([float(top[row, 0] - top[row, 1])]),
            "topk_mass": np.array([float(top[row].sum())]),
            "surprisal": np.array([float(-log_probs[row, chosen[row]] / np.log(2))]),
        }
        expected = sum(risk.components(values, SCALES).values())
        assert float(on_device[row]) == pytest.approx(expected, abs=1e-5)


def _Step(logits, hidden=None, chosen=None) -> StepCapture:  # noqa: N802 - reads like the record it builds
    return StepCapture(0, logits.shape[0], logits, hidden, None, None, chosen)


def _running(info, *steps: StepCapture):
    """The running risk of ``steps`` handed over as one block, ``(steps, rows)``, or None."""
    values = risk.corevital_steps(info, StepBlock.of_steps(list(steps)))
    return None if values is None else values[risk.RUNNING_SERIES]


def _step_running(info, step: StepCapture):
    return _running(info, step)[0]


def test_running_risk_is_an_ema_and_sticks_at_one_after_nan():
    info = make_info(rows=2)
    risk.corevital_generation_start(info)
    flat = torch.zeros(2, 50)  # uniform: high entropy, zero margin
    first = _step_running(info, _Step(flat))
    peaked = torch.full((2, 50), -30.0)
    peaked[:, 0] = 30.0
    second = _step_running(info, _Step(peaked, chosen=torch.zeros(2, dtype=torch.long)))
    assert torch.allclose(second, (1 - risk.RUNNING_ALPHA) * first, atol=1e-5)  # peaked scores 0
    hidden = torch.zeros(2, 2, 8)  # (layers, rows, hidden)
    hidden[1, 0, 3] = float("nan")  # row 0 breaks in layer 1
    third = _step_running(info, _Step(peaked, hidden=hidden))
    assert third[0] == 1.0 and third[1] < 1.0
    fourth = _step_running(info, _Step(peaked))
    assert fourth[0] == 1.0  # sticky


def test_running_risk_of_a_block_equals_stepping_one_by_one():
    torch.manual_seed(3)
    steps = []
    for index in range(7):
        logits = torch.randn(2, 50) * (1 + index)
        hidden = torch.randn(2, 2, 8)
        if index == 4:
            hidden[0, 1, 2] = float("nan")  # row 1 breaks at step 4
        steps.append(StepCapture(index, 2, logits, hidden, None, None, torch.tensor([index, 1])))
    one_by_one = make_info(rows=2)
    risk.corevital_generation_start(one_by_one)
    expected = torch.stack([_step_running(one_by_one, step) for step in steps])
    blocks = make_info(rows=2)
    risk.corevital_generation_start(blocks)
    got = torch.cat([_running(blocks, *steps[:3]), _running(blocks, *steps[3:])])
    assert torch.allclose(got, expected, atol=1e-6)
    assert got[4:, 1].tolist() == [1.0, 1.0, 1.0] and got[:4, 1].lt(1.0).all()


def test_running_risk_can_be_switched_off():
    info = make_info(rows=1, risk={"running": False})
    risk.corevital_generation_start(info)
    assert _running(info, _Step(torch.zeros(1, 5))) is None


def test_assess_publishes_scores_levels_factors_features_and_metrics():
    entropy = np.stack([np.full(STEPS, 2.0), np.full(STEPS, 5.0)], axis=1)
    repetition = np.stack([np.zeros(STEPS), np.ones(STEPS)], axis=1)
    series = make_series(logits__entropy=entropy, health__repetition=repetition)
    results = results_with(
        corevital__health__per_row__repetition_loop_detected=np.array([False, True]),
        corevital__health__per_row__nan_detected=np.array([False, False]),
    )
    info = make_info(rows=2, capture_mode="on_risk")
    risk.corevital_assess(info, series, results)
    scores = results.get("corevital.risk.score")
    weights = _risk_model.DEFAULT_WEIGHTS
    # no tokenizer: the first line is the whole row, at the bad entropy throughout
    pushes = ("entropy", "line_entropy", "first_entropy", "loop")
    loop_row = _risk_model.DEFAULT_INTERCEPT + sum(weights[name] for name in pushes)
    assert scores[0] == pytest.approx(sigmoid(_risk_model.DEFAULT_INTERCEPT))
    assert scores[1] == pytest.approx(sigmoid(loop_row))
    assert results.get("corevital.risk.level") == ["low", "high"]
    assert results.get("corevital.risk.factors") == ["", "repetition_loop,entropy,line_entropy,first_entropy"]
    assert results.get("corevital.risk.calibration") == "family:default"
    assert results.get(risk.LINES_ATTRIBUTE) is False
    features = np.array(results.get(risk.FEATURES_ATTRIBUTE)).reshape(2, len(_risk_features.NAMES))
    assert features[1, _risk_features.NAMES.index("loop")] == 1.0 and not features[0].any()
    assert results.escalations == ["risk", "serious_flag"]
    recorded = [(m.name, m.value, m.attributes) for m in results.metrics]
    assert recorded == [
        ("corevital.risk.score", scores[0], {}),
        ("corevital.generations", 1.0, {"corevital.risk.level": "low"}),
        ("corevital.risk.score", scores[1], {}),
        ("corevital.generations", 1.0, {"corevital.risk.level": "high"}),
    ]


@pytest.mark.parametrize("capture_mode", ["on_risk", "full", "summary"])
def test_escalation_only_in_on_risk_mode_and_only_when_risky(capture_mode):
    series = make_series(logits__entropy=np.full(STEPS, 2.0))
    results = results_with()
    risk.corevital_assess(make_info(capture_mode=capture_mode), series, results)
    assert results.escalations == []


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"risk": {"escalate_treshold": 0.5}}, ValueError),
        ({"risk": ["running"]}, TypeError),
        ({"fingerprint": {"sault": "x"}}, ValueError),
    ],
)
def test_misspelt_options_raise_instead_of_keeping_defaults(options, error):
    from corevital_otel.plugins import _options

    (plugin,) = options
    with pytest.raises(error, match="plugin_options"):
        _options.settings(options, plugin)


def test_a_misspelt_option_is_refused_at_instrument_time(instrumented):
    import transformers.modeling_utils  # noqa: F401  instrument() checks options once this is imported

    import corevital_otel

    expected = (
        r"^plugin 'risk': plugin_options\['risk'\]: unknown option\(s\) escalate_treshold; "
        r"allowed: escalate_threshold, scales, running, calibration$"
    )
    with pytest.raises(corevital_otel.ConfigError, match=expected):
        instrumented(plugin_options={"risk": {"escalate_treshold": 0.5}})
    assert not corevital_otel.is_instrumented()


def test_masked_logits_are_not_breakage():
    info = make_info(rows=1)
    risk.corevital_generation_start(info)
    logits = torch.zeros(1, 50)
    logits[0, 10:] = float("-inf")  # a model masking part of its vocabulary
    running = _step_running(info, _Step(logits))
    assert float(running[0]) < 1.0
    logits[0, 3] = float("inf")
    assert float(_step_running(info, _Step(logits.clone()))[0]) == 1.0
