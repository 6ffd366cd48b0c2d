"""The risk features of the first generated line (layout version 2): where the line ends (the tokenizer's
newline-bearing ids, found once per tokenizer), the line's mean entropy on hand-made series, the
whole-row fallback without a tokenizer, and calibrations or spans of the old 9-feature layout refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from corevital_otel.cli import main
from corevital_otel.demo_model import DEMO_MODEL_DIR
from corevital_otel.plugins import _lines, _risk_features, _risk_model, risk

from .helpers import make_info, make_series, results_with

NAMES = _risk_features.NAMES
WIDTH = len(NAMES)
LINE_ENTROPY, LINE_ENDED = NAMES.index("line_entropy"), NAMES.index("line_ended")
NEWLINE = 7  # the fake tokenizer's newline-bearing id


class FakeTokenizer:
    """Token ``i`` decodes to ``t<i>``, except ``NEWLINE`` (a newline after spaces); counts decodes."""

    def __init__(self, size: int = 20) -> None:
        self.size = size
        self.decoded = 0

    def __len__(self) -> int:
        return self.size

    def decode(self, ids: list[int]) -> str:
        self.decoded += 1
        return "".join("  \n" if i == NEWLINE else f"t{i}" for i in ids)


def test_newline_ids_of_the_demo_tokenizer_are_every_id_whose_text_holds_a_newline():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    found = _lines.newline_ids(tokenizer)
    assert found.tolist() == [i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i])]
    assert 10 < found.size < len(tokenizer) // 10  # "\n", "\n    ", "\n\n", ...: a few, not most
    encoded = tokenizer("x = 1\ny = 2")["input_ids"]
    assert [int(np.isin(t, found)) for t in encoded].count(1) == 1
    ends = next(step for step, token in enumerate(encoded) if "\n" in tokenizer.decode([token])) + 1
    assert _lines.first_line_steps(np.array(encoded), found) == ends


def test_newline_ids_are_found_once_per_tokenizer_and_again_when_the_vocabulary_grows():
    tokenizer = FakeTokenizer()
    assert _lines.newline_ids(tokenizer).tolist() == [NEWLINE]
    assert tokenizer.decoded == 20
    _lines.newline_ids(tokenizer)
    assert tokenizer.decoded == 20  # cached
    tokenizer.size = 25  # add_tokens
    _lines.newline_ids(tokenizer)
    assert tokenizer.decoded == 45
    other = FakeTokenizer()
    _lines.newline_ids(other)
    assert other.decoded == 20  # per tokenizer


def test_first_line_steps_count_up_to_and_including_the_first_newline_token():
    newlines = np.array([NEWLINE, 9])
    assert _lines.first_line_steps(np.array([1, 2, 9, 3, NEWLINE]), newlines) == 3
    assert _lines.first_line_steps(np.array([NEWLINE]), newlines) == 1
    assert _lines.first_line_steps(np.array([1, 2, 3]), newlines) is None
    assert _lines.first_line_steps(np.array([-1, -1]), newlines) is None


# entropy in bits; the default family scale is 2 -> 5 bits: scaled (x - 2) / 3
ENTROPY = np.array([2.0, 5.0, 8.0, 11.0, 11.0, 11.0])
LINE_TOKENS = np.array([3, 4, NEWLINE, 5, 6, 8])  # the line ends at step 2 (3 steps)


def assess(tokens: np.ndarray | None, tokenizer: object | None, rows: int = 1, **options):
    entropy = np.repeat(ENTROPY[:, None], rows, axis=1)
    series = make_series(logits__entropy=entropy)
    if tokens is not None:
        series.tokens[:] = np.asarray(tokens).reshape(len(ENTROPY), -1)
    info = make_info(rows=rows, **options)
    info.tokenizer = tokenizer
    results = results_with()
    risk.corevital_assess(info, series, results)
    return results, np.array(results.get(risk.FEATURES_ATTRIBUTE)).reshape(rows, WIDTH)


def test_the_first_line_mean_entropy_covers_the_steps_up_to_the_newline():
    results, features = assess(LINE_TOKENS, FakeTokenizer())
    assert features[0, LINE_ENTROPY] == pytest.approx(np.mean([0.0, 1.0, 2.0]))  # steps 0-2, scaled
    assert features[0, LINE_ENDED] == 1.0
    assert features[0, NAMES.index("entropy")] == pytest.approx(np.mean([0.0, 1.0, 2.0, 3.0, 3.0, 3.0]))
    assert results.get(risk.LINES_ATTRIBUTE) is True


def test_a_line_that_never_ends_is_the_whole_row():
    results, features = assess(np.array([3, 4, 5, 6, 8, 9]), FakeTokenizer())
    assert features[0, LINE_ENTROPY] == pytest.approx(features[0, NAMES.index("entropy")])
    assert features[0, LINE_ENDED] == 0.0
    assert results.get(risk.LINES_ATTRIBUTE) is True  # known: it did not end


def test_rows_end_their_lines_apart():
    tokens = np.stack([LINE_TOKENS, np.array([NEWLINE, 1, 1, 1, 1, 1])], axis=1)
    _, features = assess(tokens, FakeTokenizer(), rows=2)
    assert features[:, LINE_ENTROPY].tolist() == pytest.approx([1.0, 0.0])  # row 1: its first step only
    assert features[:, LINE_ENDED].tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    ("tokens", "tokenizer"),
    [(LINE_TOKENS, None), (np.full(6, -1), FakeTokenizer())],
    ids=["no tokenizer", "tokens unknown (beams)"],
)
def test_without_line_ends_the_line_features_cover_the_whole_row_and_the_span_says_so(tokens, tokenizer):
    results, features = assess(tokens, tokenizer)
    assert features[0, LINE_ENTROPY] == pytest.approx(features[0, NAMES.index("entropy")])
    assert features[0, LINE_ENDED] == 0.0
    assert results.get(risk.LINES_ATTRIBUTE) is False


class BrokenTokenizer(FakeTokenizer):
    def decode(self, ids: list[int]) -> str:
        raise ValueError("cannot decode")


def test_a_tokenizer_that_cannot_decode_costs_the_line_ends_only():
    results, features = assess(LINE_TOKENS, BrokenTokenizer())
    assert results.get(risk.LINES_ATTRIBUTE) is False
    assert features[0, LINE_ENTROPY] == pytest.approx(features[0, NAMES.index("entropy")])
    assert results.get("corevital.risk.score") is not None
    assert results.lost == ["risk: line ends: ValueError: cannot decode"]


def version_1_document() -> dict:
    """A calibration as the previous release wrote it: 9 features."""
    names = NAMES[:9]
    return {
        "format": _risk_model.FORMAT,
        "version": 1,
        "model": "test-model",
        "predicts": "incorrect",
        "features": {"version": 1, "names": list(names)},
        "scales": {"source": "family:default", **{m: [0.0, 1.0] for m in ("entropy", "margin")}},
        "intercept": -1.0,
        "weights": dict.fromkeys(names, 0.5),
        "fit": {},
    }


def test_a_calibration_of_the_9_feature_layout_is_refused_naming_both_versions(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps(version_1_document()))
    refused = r"layout version 1 \(9 features\).*layout 2 \(11 features\)"
    with pytest.raises(_risk_model.CalibrationError, match=refused):
        _risk_model.load(path)


def test_a_calibration_of_the_9_feature_layout_fails_instrument(instrumented, tmp_path):
    import transformers.modeling_utils  # noqa: F401  instrument() checks options once this is imported

    path = tmp_path / "old.json"
    path.write_text(json.dumps(version_1_document()))
    with pytest.raises(Exception, match="layout version 1"):
        instrumented(plugin_options={"risk": {"calibration": str(path)}})


def calibrated(tmp_path, lines_known: bool) -> str:
    document = _risk_model.document(
        model="test-model",
        predicts="incorrect",
        intercept=-1.0,
        weights=np.full(WIDTH, 0.1),
        scales=risk.resolve(make_info()),
        fit={},
        created="now",
        lines_known=lines_known,
    )
    path = tmp_path / "risk.json"
    path.write_text(json.dumps(document))
    assert _risk_model.load(path).lines_known is lines_known
    return str(path)


def test_a_calibration_fitted_with_line_ends_notes_their_absence(tmp_path):
    path = calibrated(tmp_path, lines_known=True)
    results, _ = assess(LINE_TOKENS, None, risk={"calibration": path})
    assert results.get("corevital.risk.calibration") == "outcomes:risk.json"
    assert any("line ends" in note for note in results.lost)
    results, _ = assess(LINE_TOKENS, FakeTokenizer(), risk={"calibration": path})
    assert results.lost == []


def test_a_calibration_fitted_without_line_ends_gets_whole_row_lines_as_its_rows_had(tmp_path):
    path = calibrated(tmp_path, lines_known=False)
    results, features = assess(LINE_TOKENS, FakeTokenizer(), risk={"calibration": path})
    assert features[0, LINE_ENTROPY] == pytest.approx(features[0, NAMES.index("entropy")])
    assert features[0, LINE_ENDED] == 0.0
    assert results.get(risk.LINES_ATTRIBUTE) is False and results.lost == []


def outcome_line(features: list[float], rows: int, label: str, lines_known: bool = True) -> str:
    attributes = {
        "corevital.risk.features": features,
        "corevital.risk.score": [0.5] * rows,
        "corevital.risk.calibration": "family:gpt2",
        "corevital.risk.lines_known": lines_known,
        "gen_ai.request.model": "m",
    }
    return json.dumps({"attributes": attributes, "label": label})


def test_spans_of_the_9_feature_layout_are_refused_by_calibrate(tmp_path, capsys):
    # Eleven rows of 9 features are 99 values, a whole number of 11-feature rows: the score's rows tell.
    lines = [outcome_line([0.1] * 99, rows=11, label="incorrect") for _ in range(12)]
    outcomes = tmp_path / "outcomes.jsonl"
    outcomes.write_text("\n".join(lines))
    assert main(["calibrate", "--outcomes", str(outcomes), "--out", str(tmp_path / "r.json")]) == 2
    assert "99 values for 11 rows, not 11 per row" in capsys.readouterr().err


def test_calibrate_will_not_mix_rows_with_and_without_line_ends(tmp_path, capsys):
    lines = [
        outcome_line([float(i)] * WIDTH, rows=1, label="incorrect" if i % 2 else "correct", lines_known=i < 6)
        for i in range(12)
    ]
    outcomes = tmp_path / "outcomes.jsonl"
    outcomes.write_text("\n".join(lines))
    assert main(["calibrate", "--outcomes", str(outcomes), "--out", str(tmp_path / "r.json")]) == 2
    assert "with and without their line ends" in capsys.readouterr().err


def test_without_line_ends_the_default_score_is_layout_1s():
    """Entropy weighs 2.0 in all, split between the row and its first line: when the line is the row,
    the score is the one layout 1's weights (entropy 2.0, no line features) gave."""
    rng = np.random.default_rng(5)
    values = {
        "entropy": rng.uniform(0, 9, 20),
        "margin": rng.uniform(0, 1, 20),
        "surprisal": rng.uniform(0, 9, 20),
    }
    scales = risk.resolve(make_info())
    layout_1 = dict(_risk_model.DEFAULT_WEIGHTS, entropy=2.0, line_entropy=0.0, line_ended=0.0)
    weights = np.array([layout_1[name] for name in NAMES])
    features = _risk_features.row_features(values, None, risk.Flags(), scales)
    expected = 1 / (1 + np.exp(-(_risk_model.DEFAULT_INTERCEPT + features @ weights)))
    assert risk.row_risk(values, risk.Flags(), scales).score == pytest.approx(expected)
    ended = risk.row_risk(values, risk.Flags(), scales, line_steps=3).score
    assert ended != pytest.approx(expected)  # with a line end the first line counts on its own
