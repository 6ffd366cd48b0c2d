"""``corevital-otel calibrate --outcomes``: the numpy logistic fit and its measures, the outcomes file
(span attributes or trace ids resolved in OTLP JSON), and the fitted calibration put to use by the risk
plugin: the score becomes the fit's probability and the span names the calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import corevital_otel
from corevital_otel.cli import main
from corevital_otel.plugins import _logistic, _risk_features, _risk_model

FIRST_ENTROPY = _risk_features.NAMES.index("first_entropy")
WIDTH = len(_risk_features.NAMES)


def test_fit_recovers_known_weights():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(4000, 3))
    truth = np.array([1.5, -2.0, 0.0])
    failed = rng.random(4000) < 1 / (1 + np.exp(-(0.5 + features @ truth)))
    fitted = _logistic.fit(features, failed, l2=1e-3)
    assert fitted.weights == pytest.approx(truth, abs=0.15)
    assert fitted.intercept == pytest.approx(0.5, abs=0.15)
    held_out = _logistic.out_of_fold(features, failed, np.arange(4000) // 4)
    assert _logistic.expected_calibration_error(held_out, failed) < 0.03
    oracle = 1 / (1 + np.exp(-(0.5 + features @ truth)))
    assert _logistic.auroc(held_out, failed) == pytest.approx(_logistic.auroc(oracle, failed), abs=0.01)


def test_folds_keep_each_group_whole():
    groups = [f"prompt-{i // 3}" for i in range(60)]
    fold = _logistic.group_folds(groups, 5)
    for group in set(groups):
        assert len({fold[i] for i, g in enumerate(groups) if g == group}) == 1
    assert set(fold) == set(range(5))


def test_auroc_matches_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, 200).astype(float)
    positive = rng.random(200) < 0.3
    pos, neg = scores[positive], scores[~positive]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        pos.size * neg.size
    )
    assert _logistic.auroc(scores, positive) == pytest.approx(pairwise)


@pytest.mark.parametrize(
    ("label", "failure", "failed"),
    [
        ("incorrect", "incorrect", True),
        ("Incorrect ", "incorrect", True),
        ("correct", "incorrect", False),
        (0.0, "0", True),
        (0, "0", True),
        (1, "0", False),
        ("False", "false", True),
        (True, "0", False),
    ],
)
def test_labels_match_the_failure_as_numbers_or_text(label, failure, failed):
    from corevital_otel.commands._outcomes import is_failure

    assert is_failure(label, failure) is failed


def test_expected_calibration_error():
    assert _logistic.expected_calibration_error(np.array([0.25] * 4), np.array([1, 0, 0, 0])) == 0.0
    assert _logistic.expected_calibration_error(np.array([0.95] * 10), np.zeros(10)) == pytest.approx(0.95)


def generate_rows(telemetry, model, batches: int = 8, rows: int = 4) -> list[dict]:
    """Rows of several generations: each with its span's attributes, row index and trace id."""
    out = []
    for batch in range(batches):
        generator = torch.Generator().manual_seed(batch)
        ids = torch.randint(3, 96, (rows, 5 + batch % 3), generator=generator)
        model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False, pad_token_id=0
        )
        span = telemetry.generation_spans()[-1]
        attributes = {k: list(v) if isinstance(v, tuple) else v for k, v in span.attributes.items()}
        trace = format(span.context.trace_id, "032x")
        out += [{"attributes": attributes, "row": row, "trace_id": trace} for row in range(rows)]
    return out


def labelled(rows: list[dict]) -> list[dict]:
    """Label a row incorrect when its first-step entropy is above the median (a rule the fit must find)."""
    first = [r["attributes"]["corevital.risk.features"][WIDTH * r["row"] + FIRST_ENTROPY] for r in rows]
    cut = float(np.median(first))
    return [
        {**r, "label": "incorrect" if value > cut else "correct"}
        for r, value in zip(rows, first, strict=True)
    ]


def otlp_json(rows: list[dict]) -> str:
    """The rows' spans as OTLP JSON lines (the Collector file exporter's format)."""

    def value(item):
        if isinstance(item, list):
            return {"arrayValue": {"values": [value(v) for v in item]}}
        if isinstance(item, bool):
            return {"boolValue": item}
        if isinstance(item, int):
            return {"intValue": str(item)}
        if isinstance(item, float):
            return {"doubleValue": item}
        return {"stringValue": str(item)}

    spans = {r["trace_id"]: r["attributes"] for r in rows}
    return "\n".join(
        json.dumps(
            {
                "resourceSpans": [
                    {
                        "scopeSpans": [
                            {
                                "spans": [
                                    {
                                        "traceId": trace,
                                        "attributes": [
                                            {"key": k, "value": value(v)} for k, v in attributes.items()
                                        ],
                                    }
                                ]
                            }
                        ]
                    }
                ]
            }
        )
        for trace, attributes in spans.items()
    )


def test_calibrate_fits_outcomes_and_the_risk_plugin_applies_the_fit(instrumented, tmp_path, capsys):
    from tests.support.tiny_models import build_model

    telemetry = instrumented(capture_mode="summary")
    model = build_model("gpt2")
    rows = labelled(generate_rows(telemetry, model))
    outcomes = tmp_path / "outcomes.jsonl"
    outcomes.write_text(
        "\n".join(json.dumps({k: r[k] for k in ("attributes", "row", "label")}) for r in rows)
    )
    out = tmp_path / "risk.json"
    assert main(["calibrate", "--outcomes", str(outcomes), "--out", str(out)]) == 0
    assert "held-out AUROC" in capsys.readouterr().out
    document = json.loads(out.read_text())
    assert document["predicts"] == "incorrect" and document["scales"]["source"] == "family:gpt2"
    assert document["fit"]["rows"] == len(rows) and document["fit"]["groups"] == len(rows)  # prompt hashes
    assert document["fit"]["cv_auroc"] > 0.8
    assert document["weights"]["first_entropy"] > 0
    fitted = _risk_model.load(out)
    assert fitted.source == "outcomes:risk.json"

    corevital_otel.uninstrument()
    instrumented(capture_mode="summary", plugin_options={"risk": {"calibration": str(out)}})
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]])
    model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False, pad_token_id=0
    )
    attributes = telemetry.generation_spans()[-1].attributes
    assert attributes["corevital.risk.calibration"] == "outcomes:risk.json"
    features = np.array(attributes["corevital.risk.features"]).reshape(2, WIDTH)
    assert list(attributes["corevital.risk.score"]) == pytest.approx(
        list(fitted.score(features)), abs=1e-3
    )  # features exported to 6 decimals


def test_trace_ids_resolve_through_otlp_json_spans(instrumented, tmp_path):
    from tests.support.tiny_models import build_model

    telemetry = instrumented(capture_mode="summary")
    rows = labelled(generate_rows(telemetry, build_model("gpt2"), batches=4))
    spans = tmp_path / "spans.jsonl"
    spans.write_text(otlp_json(rows))
    outcomes = tmp_path / "outcomes.jsonl"
    outcomes.write_text("\n".join(json.dumps({k: r[k] for k in ("trace_id", "row", "label")}) for r in rows))
    out = tmp_path / "risk.json"
    assert main(["calibrate", "--outcomes", str(outcomes), "--spans", str(spans), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["fit"]["rows"] == len(rows)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([{"attributes": {}, "label": "incorrect"}], "no corevital.risk.features"),
        ([{"trace_id": "ab", "label": "incorrect"}], "not found"),
        ([{"attributes": {"corevital.risk.features": [0.0] * WIDTH}}], "no label"),
    ],
)
def test_unusable_outcomes_fail_with_a_reason(tmp_path, capsys, lines, message):
    outcomes = tmp_path / "outcomes.jsonl"
    outcomes.write_text("\n".join(json.dumps(line) for line in lines))
    assert main(["calibrate", "--outcomes", str(outcomes), "--out", str(tmp_path / "r.json")]) == 2
    assert message in capsys.readouterr().err


def test_one_class_only_cannot_be_fitted(tmp_path, capsys):
    rows = [
        {
            "attributes": {
                "corevital.risk.features": [float(i)] * WIDTH,
                "corevital.risk.calibration": "family:gpt2",
            },
            "label": "correct",
            "group": str(i),
        }
        for i in range(12)
    ]
    outcomes = tmp_path / "outcomes.jsonl"
    outcomes.write_text("\n".join(json.dumps(row) for row in rows))
    assert main(["calibrate", "--outcomes", str(outcomes), "--out", str(tmp_path / "r.json")]) == 2
    assert "both classes needed" in capsys.readouterr().err


def test_an_unreadable_calibration_fails_instrument(instrumented, tmp_path):
    import transformers.modeling_utils  # noqa: F401  instrument() checks options once this is imported

    broken = tmp_path / "risk.json"
    broken.write_text("{}")
    with pytest.raises(Exception, match="corevital-risk-calibration"):
        instrumented(plugin_options={"risk": {"calibration": str(broken)}})
