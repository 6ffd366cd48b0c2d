"""The narrative never contradicts the score or the flags, cites real values, and stays 2-5 sentences."""

from __future__ import annotations

import re

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from corevital_otel.plugins import compound, early_warning, narrative, risk
from corevital_otel.plugins._inputs import FLAG_ATTRIBUTES

from .helpers import make_info, make_series, results_with

# Words that may only appear when their flag fired.
FLAG_WORDS = {
    "nan": ("NaN",),
    "inf": ("infinite", "Inf values"),
    "repetition_loop": ("repetition loop",),
    "mid_layer_anomaly": ("mid-layer anomaly",),
    "attention_collapse": ("ttention collapse",),
}


def sentences(text: str) -> list[str]:
    return re.split(r"(?<=\.) ", text)


def analysed(flags: dict[str, bool], entropy: np.ndarray, margin: np.ndarray, extra=None):
    info = make_info(rows=1)
    series = make_series(logits__entropy=entropy, logits__margin=margin)
    results = results_with(**(extra or {}))
    for name, attribute in FLAG_ATTRIBUTES.items():
        results.set(attribute, np.array([flags.get(name, False)]))
    results.set("corevital.health.per_row.high_entropy_steps", np.array([int((entropy > 4.0).sum())]))
    for plugin in (risk, early_warning, compound):
        plugin.corevital_assess(info, series, results)
    narrative.corevital_explain(info, series, results)
    return results, results.get("corevital.narrative")[0]


series_values = st.lists(st.floats(0.0, 7.0), min_size=0, max_size=40)


@settings(max_examples=150, deadline=None)
@given(
    flags=st.fixed_dictionaries({name: st.booleans() for name in FLAG_WORDS}),
    entropy=series_values,
    nan_at=st.one_of(st.none(), st.integers(0, 39)),
)
def test_narrative_never_contradicts_score_or_flags(flags, entropy, nan_at):
    entropy = np.asarray(entropy, dtype=np.float64)
    if nan_at is not None and nan_at < entropy.size:
        entropy[nan_at] = np.nan
    margin = np.clip(0.6 - entropy / 10, 0, 1)
    results, text = analysed(flags, entropy, margin)
    score = results.get("corevital.risk.score")[0]
    parts = sentences(text)
    assert 2 <= len(parts) <= 5, text
    assert parts[0].startswith(f"Risk was {risk.risk_level(score)} ({score:.2f})"), text
    raised = [name for name, on in flags.items() if on]
    high_entropy = int((entropy > 4.0).sum())
    fired_any = bool(raised) or high_entropy > 0
    assert ("no health flag fired" in text) == (not fired_any), text
    for name, words in FLAG_WORDS.items():
        mentioned = any(word in text for word in words)
        assert mentioned == (name in raised), (name, text)
    if flags["nan"] or flags["inf"]:
        assert score == 1.0 and "high (1.00)" in text
    finite = entropy[np.isfinite(entropy)]
    if finite.size:
        peak = float(finite.max())
        cited = re.search(
            r"Entropy (?:spiked to|stayed between [\d.]+ and|ranged from [\d.]+ to|was) ([\d.]+) bits", text
        )
        if len(raised) < 2:  # otherwise flag sentences may fill the five
            assert cited, text
        if cited:
            assert float(cited.group(1)) == round(peak, 1), text
            spiked = peak > 4.0 and peak - float(np.median(finite)) >= narrative.SPIKE_BITS
            assert ("spiked" in text) == spiked, text
            assert ("high-entropy threshold" in text or spiked) == (peak > 4.0), text
            if round(peak, 1) == round(float(finite.min()), 1):
                assert "spiked" not in text and "bits on " in text, text  # flat: no spike


def test_the_example_sentence_cites_step_and_value():
    entropy = np.full(20, 1.0)
    entropy[14] = 6.1
    _, text = analysed({}, entropy, np.full(20, 0.5))
    assert "Entropy spiked to 6.1 bits at step 14" in text


def test_flags_cite_steps_layers_and_interventions():
    entropy = np.full(10, 1.0)
    extra = {
        "health__nonfinite": np.array([0.0] * 6 + [1.0] * 4),
        "corevital__blame__top_layer": [3],
        "corevital__blame__top_reasons": ["nonfinite"],
        "corevital__blame__top_severity": [1.0],
        "corevital__intervention__reasons": ["nan"],
        "corevital__intervention__steps": [6],
    }
    info = make_info(rows=1)
    series = make_series(logits__entropy=entropy, health__nonfinite=extra.pop("health__nonfinite"))
    results = results_with(**extra)
    results.set("corevital.health.per_row.nan_detected", np.array([True]))
    risk.corevital_assess(info, series, results)
    narrative.corevital_explain(info, series, results)
    text = results.get("corevital.narrative")[0]
    assert text.startswith("Risk was high (1.00), driven by NaN values.")
    assert "Generation was stopped at step 6 by the nan intervention." in text
    assert "NaN values first appeared at step 6 in layer 3." in text
    assert len(sentences(text)) <= 5


def test_low_risk_run_says_so_plainly():
    _, text = analysed({}, np.full(8, 1.5), np.full(8, 0.6))
    assert text.startswith("Risk was low (0.0")
    assert "no health flag fired" in text
    assert "Entropy was 1.5 bits on every step." in text


def test_a_flat_high_series_is_not_called_a_spike():
    _, text = analysed({}, np.full(6, 8.0), np.full(6, 0.0))
    assert "spiked" not in text
    assert "Entropy was 8.0 bits on every step, above the 4.0-bit high-entropy threshold." in text
    _, text = analysed({}, np.array([8.0]), np.array([0.0]))
    assert "Entropy was 8.0 bits on the only step" in text


def test_a_broad_high_series_reports_its_range_and_share():
    _, text = analysed({}, np.array([4.5, 5.0, 4.8, 5.2, 3.9]), np.full(5, 0.1))
    assert "Entropy ranged from 3.9 to 5.2 bits (mean 4.7 bits), 4 of 5 steps above the 4.0-bit" in text


def test_no_step_still_two_sentences():
    _, text = analysed({}, np.zeros(0), np.zeros(0))
    assert sentences(text)[1] == "0 tokens were generated."
