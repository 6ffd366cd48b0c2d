"""Calibrated baselines (file format, divergence, anomalous steps) and the rolling per-model baseline."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from corevital_otel.plugins import _baseline_file, baseline
from corevital_otel.plugins._baseline_file import BaselineError

from .helpers import make_info, make_series, results_with

RNG = np.random.default_rng(0)
CALIBRATION = {
    "logits.entropy": RNG.normal(3.0, 0.5, 4000),
    "logits.margin": RNG.uniform(0.2, 0.6, 4000),
}


def write_baseline(path, model="test-model", observed=CALIBRATION):
    document = _baseline_file.build(
        observed, model, "llama", "llama", {"prompts": 3}, "2026-01-01T00:00:00+00:00"
    )
    path.write_text(json.dumps(document))
    return path


def test_build_parse_round_trip_and_cdf(tmp_path):
    loaded = _baseline_file.load(write_baseline(tmp_path / "b.json"))
    entropy = loaded.get("logits.entropy")
    assert loaded.model == "test-model" and entropy.count == 4000
    assert entropy.quantile(0.5) == pytest.approx(3.0, abs=0.05)
    assert entropy.cdf(np.array([-10.0, 3.0, 10.0])) == pytest.approx([0.0, 0.5, 1.0], abs=0.02)


def test_distribution_skips_nonfinite_and_empty():
    assert _baseline_file.distribution([np.nan, np.inf]) is None
    assert _baseline_file.distribution([1.0, np.nan, 3.0])["count"] == 2


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"format": "other"}, "not a corevital baseline"),
        ({"format": "corevital-baseline", "version": 99}, "unsupported baseline version"),
        (
            {"format": "corevital-baseline", "version": 1, "metrics": {"m": {"quantiles": [1.0, 2.0]}}},
            "101 finite",
        ),
        (
            {
                "format": "corevital-baseline",
                "version": 1,
                "metrics": {"m": {"quantiles": list(range(101))[::-1]}},
            },
            "not sorted",
        ),
    ],
)
def test_invalid_files_raise_with_a_reason(tmp_path, document, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    with pytest.raises(BaselineError, match=message):
        _baseline_file.load(path)


def test_configured_paths_option_over_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("COREVITAL_BASELINE", f"{tmp_path / 'a.json'}:{tmp_path / 'b.json'}")
    assert _baseline_file.configured_paths({}) == [str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    assert _baseline_file.configured_paths({"baseline": {"path": "x.json"}}) == ["x.json"]


def test_ks_distance():
    uniform = _baseline_file.MetricDistribution(100, 0.5, 0.3, np.linspace(0.0, 1.0, 101))
    assert baseline.ks_distance(np.linspace(0.005, 0.995, 100), uniform.cdf) == pytest.approx(0.005, abs=1e-3)
    assert baseline.ks_distance(np.full(10, 5.0), uniform.cdf) == 1.0
    assert np.isnan(baseline.ks_distance(np.array([np.nan]), uniform.cdf))


def test_row_divergence_and_anomalous_steps_in_the_risky_tail(tmp_path):
    loaded = _baseline_file.load(write_baseline(tmp_path / "b.json"))
    typical = {"logits.entropy": RNG.normal(3.0, 0.5, 200), "logits.margin": RNG.uniform(0.2, 0.6, 200)}
    assert baseline.row_divergence(typical, loaded).score < 0.15
    entropy = np.full(10, 3.0)
    entropy[4] = 9.0  # above the 99th percentile: risky
    entropy[6] = -5.0  # far below: unusual, but not risky for entropy
    margin = np.full(10, 0.4)
    margin[7] = 0.0  # below the 1st percentile: risky for the margin
    result = baseline.row_divergence({"logits.entropy": entropy, "logits.margin": margin, "x": None}, loaded)
    assert result.anomalous_steps == (4, 7)
    assert result.reasons == {4: ("logits.entropy",), 7: ("logits.margin",)}
    assert np.isnan(baseline.row_divergence({}, loaded).score)


def test_assess_with_a_configured_baseline(tmp_path):
    path = write_baseline(tmp_path / "b.json")
    entropy = np.stack([np.full(6, 3.0), np.array([3.0, 3.0, 9.0, 9.0, 3.0, 3.0])], axis=1)
    series = make_series(logits__entropy=entropy)
    results = results_with()
    baseline.corevital_assess(make_info(rows=2, baseline={"path": str(path)}), series, results)
    assert results.get("corevital.baseline.source") == "b.json"
    assert results.get("corevital.baseline.anomalous_steps") == [0, 2]
    assert results.get("corevital.baseline.first_anomalous_step") == [-1, 2]
    assert results.flagged_steps == {2: ["baseline:logits.entropy"], 3: ["baseline:logits.entropy"]}
    names = [m.name for m in results.metrics]
    assert (
        names.count("corevital.baseline.divergence") == 2
        and names.count("corevital.baseline.anomalous_steps") == 1
    )


def test_assess_ignores_other_models_and_reports_unreadable_files(tmp_path):
    path = write_baseline(tmp_path / "b.json", model="another-model")
    results = results_with()
    series = make_series(logits__entropy=np.full(4, 3.0))
    baseline.corevital_assess(make_info(baseline={"path": str(path)}), series, results)
    assert results.attributes == {} and results.lost == []
    baseline.corevital_assess(make_info(baseline={"path": str(tmp_path / "missing.json")}), series, results)
    assert results.lost and results.lost[0].startswith("baseline:")


def test_ema_tracks_the_mean_and_detects_spikes_after_warmup():
    ema = baseline.Ema()
    changes = [ema.observe(0.2 + 0.01 * (i % 2), 0.1, 0.1) for i in range(30)]
    assert ema.mean == pytest.approx(0.205, abs=0.01)
    assert sum(change for change, _ in changes) == pytest.approx(ema.mean)  # the gauge equals the EMA
    assert not any(spike for _, spike in changes)
    assert ema.observe(0.9, 0.1, 0.1)[1] is True
    early = baseline.Ema()
    assert not any(early.observe(value, 0.1, 0.1)[1] for value in (0.1, 0.9, 0.1, 0.9))  # warm-up


def test_rolling_state_is_per_model_and_thread_safe():
    rolling = baseline.RollingBaselines()

    def feed(model: str) -> None:
        for _ in range(500):
            rolling.observe(model, "risk", 0.5, 0.1)

    threads = [threading.Thread(target=feed, args=(name,)) for name in ("a", "a", "b", "a")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert rolling.snapshot("a", "risk").count == 1500 and rolling.snapshot("b", "risk").count == 500
    assert rolling.snapshot("a", "risk").mean == pytest.approx(0.5)
    rolling.reset()
    assert rolling.snapshot("a", "risk") is None


def test_explain_records_ema_changes_and_spikes():
    baseline.ROLLING.reset()
    info = make_info(rows=1)
    series = make_series(logits__entropy=np.full(4, 2.0))
    for _ in range(baseline.WARMUP):
        results = results_with(corevital__risk__score=[0.1])
        baseline.corevital_explain(info, series, results)
        assert "corevital.baseline.spike" not in results.attributes  # only when a row spiked
    results = results_with(corevital__risk__score=[0.95])
    baseline.corevital_explain(info, series, results)
    assert results.get("corevital.baseline.spike") == ["risk"]
    recorded = {m.name: m.value for m in results.metrics}
    assert recorded["corevital.baseline.risk.ema"] == pytest.approx(0.1 * (0.95 - 0.1))
    assert recorded["corevital.baseline.entropy.ema"] == pytest.approx(0.0)
    assert recorded["corevital.baseline.spikes"] == 1
    off = results_with(corevital__risk__score=[0.5])
    baseline.corevital_explain(make_info(baseline={"rolling": False}), series, off)
    assert "corevital.baseline.spike" not in off.attributes and off.metrics == []


def test_a_local_model_directory_matches_however_it_is_spelt(tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    monkeypatch.chdir(tmp_path)
    assert _baseline_file.same_model("model", str(tmp_path / "model"))
    assert _baseline_file.same_model("org/name", "org/name")
    assert not _baseline_file.same_model("model", "other")


def test_a_generation_that_raised_does_not_move_the_rolling_baseline():
    baseline.ROLLING.reset()
    info = make_info()
    info.error_type = "builtins.IndexError"
    results = results_with(corevital__risk__score=[0.5])
    baseline.corevital_explain(info, make_series(logits__entropy=np.full(3, 2.0)), results)
    assert results.metrics == [] and baseline.ROLLING.snapshot("test-model", "risk") is None
