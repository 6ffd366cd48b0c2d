"""The definitions behind docs/validation.md (scripts/validate_detectors.py), checked on known inputs."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from corevital_otel.demo_model import DEMO_MODEL_DIR

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "validate_detectors.py"


@pytest.fixture(scope="module")
def validate():
    spec = importlib.util.spec_from_file_location("validate_detectors", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_literal_loop_needs_three_periods_and_twelve_tokens(validate) -> None:
    assert validate.literal_loop([5] * 12) == 1
    assert validate.literal_loop([5] * 11) == 0  # 11 tokens: too short
    assert validate.literal_loop([5] * 11, min_tokens=8) == 1
    assert validate.literal_loop([1, 2, 3] * 2 + [1, 2], min_tokens=8) == 0  # 8 tokens, under 3 periods
    assert validate.literal_loop([9, 8] + [1, 2, 3, 4] * 3) == 4
    assert validate.literal_loop([1, 2, 3, 4] * 2 + [7]) == 0
    period_16 = list(range(16))
    assert validate.literal_loop([99] + period_16 * 3) == 16  # beyond the detector's period 8
    assert validate.literal_loop(period_16 * 2 + period_16[:15]) == 0  # 2 periods and a bit
    assert validate.literal_loop(list(range(17)) * 3) == 0  # period 17 is not looked for


def test_loop_onset_finds_a_loop_that_broke_off(validate) -> None:
    tokens = [7, 8, 9] + [1, 2] * 6 + [3, 4, 5]
    assert validate.literal_loop(tokens) == 0
    assert validate.literal_loop_onset(tokens) == 3 + 12 - 1  # the 12th looping token completes it
    assert validate.literal_loop_onset(list(range(30))) is None


def test_auroc_matches_a_rank_count(validate) -> None:
    assert validate.auroc(np.array([1.0, 2.0, 3.0, 4.0]), np.array([False, False, True, True])) == 1.0
    assert validate.auroc(np.array([4.0, 3.0, 2.0, 1.0]), np.array([False, False, True, True])) == 0.0
    assert validate.auroc(np.array([1.0, 1.0]), np.array([False, True])) == 0.5
    assert math.isnan(validate.auroc(np.array([1.0]), np.array([True])))
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, 60).astype(float)  # many ties
    labels = rng.random(60) < 0.4
    # Mann-Whitney U from average ranks: an independent route to the same number.
    order = scores.argsort()
    ranks = np.empty(60)
    ranks[order] = np.arange(1, 61)
    for value in np.unique(scores):
        ranks[scores == value] = ranks[scores == value].mean()
    positives = labels.sum()
    u = ranks[labels].sum() - positives * (positives + 1) / 2
    assert validate.auroc(scores, labels) == pytest.approx(u / (positives * (60 - positives)))


def test_wilson_interval(validate) -> None:
    low, high = validate.wilson(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.2775, abs=1e-4)
    low, high = validate.wilson(5, 10)
    assert (low, high) == pytest.approx((0.2366, 0.7634), abs=1e-4)


def test_code_lines_skip_comments_blank_lines_and_strings(validate) -> None:
    source = 'x = 1\n# note\n\ndef f():\n    """doc\n    still doc\n    """\n    return x\n'
    source += 's = """a\nb""" + y\n'
    assert validate.code_lines(source) == {0, 3, 7, 8}


def test_prompts_come_from_held_out_files_and_end_with_half_a_line(validate) -> None:
    stats = json.loads((DEMO_MODEL_DIR / "training_stats.json").read_text())
    files, warnings = validate.heldout_files(stats)
    if warnings:
        pytest.skip(f"this machine's stdlib differs from the training run: {warnings}")
    assert len(files) == stats["heldout_files"]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    prompts = validate.build_prompts(files[:2], tokenizer, 20, seed=0)
    assert len(prompts) == 20
    again = validate.build_prompts(files[:2], tokenizer, 20, seed=0)
    assert [p.text for p in prompts] == [p.text for p in again]
    by_name = {validate._stdlib_name(path): path for path in files[:2]}
    for prompt in prompts:
        assert prompt.target
        source_line = by_name[prompt.file].read_text().split("\n")[prompt.line - 1]
        assert source_line == prompt.text.split("\n")[-1] + prompt.target
        assert len(tokenizer(prompt.text)["input_ids"]) <= validate.MAX_PROMPT_TOKENS


SPREAD_PROMPTS = 30
SPREAD_TOKENS = 32


@pytest.fixture(scope="module")
def demo_records(validate):
    """Greedy and sampled generations of the demo model on its first held-out validation prompts, measured
    as scripts/validate_detectors.py measures them (kept small: the whole fixture runs in seconds)."""
    stats = json.loads((DEMO_MODEL_DIR / "training_stats.json").read_text())
    files, warnings = validate.heldout_files(stats)
    if warnings:
        pytest.skip(f"this machine's stdlib differs from the training run: {warnings}")
    import torch

    from corevital_otel.demo_model import DEMO_MODEL_NAME
    from corevital_otel.report import load_local_model

    model, tokenizer = load_local_model(DEMO_MODEL_DIR, display_name=DEMO_MODEL_NAME)
    prompts = validate.build_prompts(files, tokenizer, SPREAD_PROMPTS, seed=0)
    greedy = validate.run(model, tokenizer, prompts, SPREAD_TOKENS)
    torch.manual_seed(0)
    sampled = validate.run(model, tokenizer, prompts, SPREAD_TOKENS, sample=True)
    return {"greedy": greedy, "sampled": sampled}


@pytest.mark.parametrize("decoding", ["greedy", "sampled"])
def test_risk_is_graded_on_the_validation_prompts(validate, demo_records, decoding) -> None:
    records = demo_records[decoding]
    spread = validate.spread(records, seed=0)
    assert spread["n"] == SPREAD_PROMPTS
    assert spread["ones"] == 0  # nothing broke numerically: nothing may reach 1.0
    assert spread["largest_tie_share"] <= 0.05, sorted(r.risk for r in records)


def test_risk_ranks_looping_outputs_above_the_rest(validate, demo_records) -> None:
    spread = validate.spread(demo_records["greedy"], seed=0)
    assert 5 <= spread["loops"] <= SPREAD_PROMPTS - 5  # both kinds present, or the check says nothing
    assert spread["mean_loop"] > spread["mean_healthy"]
    assert spread["loop_auroc"] >= 0.7


def test_the_risk_line_features_are_live_and_agree_with_the_scripts_line(validate, demo_records) -> None:
    """The span's first-line features (the tokenizer reached the risk plugin, as the script registers it)
    match the script's own line, found by decoding each generated token."""
    from transformers import AutoTokenizer

    from corevital_otel.plugins._risk_features import NAMES
    from corevital_otel.plugins._scales import FAMILY_SCALES

    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    scale = FAMILY_SCALES["gpt2"]["entropy"]
    records = demo_records["greedy"]
    ended = [validate.line_steps(tokenizer, r.generated) is not None for r in records]
    assert 0 < sum(ended) < len(records)  # lines that end and lines that do not
    for record, line_ended in zip(records, ended, strict=True):
        features = dict(zip(NAMES, record.features, strict=True))
        assert features["line_ended"] == float(line_ended)
        # scaled per step then averaged = the scaled mean: no step's entropy is clipped (0-12 bits)
        expected = (record.line_entropy - scale.typical) / (scale.bad - scale.typical)
        assert features["line_entropy"] == pytest.approx(expected, abs=1e-5)
