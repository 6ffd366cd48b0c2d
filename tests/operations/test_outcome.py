"""The outcome plugin: one class per returned sequence, through real instrumented generate() calls."""

from __future__ import annotations

import json

import pytest
import torch

import corevital_otel
from corevital_otel.plugins import outcome
from tests.core.helpers import generation_span, metric_points
from tests.support.tiny_models import VOCAB, build_model

from .helpers import EOS, ids, script_rows, word_tokenizer

MAX_NEW_TOKENS = 10

# Row -> the tokens it is made to generate, and the class it must get (with a tokenizer).
SCRIPTS = {
    0: ("</s>", "empty_output"),
    1: ("I cannot help with that . </s>", "refusal"),
    2: ("w30 w31 w32 w33 w34 w35 w36 w37 w38 w39", "truncated"),
    3: ('w30 w31 w32 w33 w34 w35 w36 w37 . "', "none"),  # token limit, but at a sentence's end
    4: ("w40 " * MAX_NEW_TOKENS, "repetition"),
    5: ("w30 w31 } </s>", "none"),
}


def _prompt(rows: int) -> torch.Tensor:
    return torch.arange(10, 10 + 4 * rows).reshape(rows, 4) % VOCAB


def _generate(model, scripts: dict[int, str], **kwargs):
    prompt = _prompt(len(scripts))
    rows = {row: ids(text) for row, text in scripts.items()}
    return model.generate(
        input_ids=prompt,
        max_new_tokens=MAX_NEW_TOKENS,
        do_sample=False,
        logits_processor=script_rows(prompt.shape[1], rows),
        **kwargs,
    )


def _classes(telemetry) -> list[str]:
    return corevital_otel.row_values(generation_span(telemetry).attributes["corevital.outcome.class"])


def _counts(telemetry) -> dict[str, int]:
    return {
        p.attributes["corevital.outcome.class"]: p.value
        for p in metric_points(telemetry, "corevital.outcomes")
    }


@pytest.fixture(scope="module")
def llama():
    return build_model("llama")


def test_each_class_from_its_evidence(instrumented, llama):
    telemetry = instrumented()
    corevital_otel.register_tokenizer(llama, word_tokenizer())
    _generate(llama, {row: text for row, (text, _) in SCRIPTS.items()})
    assert _classes(telemetry) == [cls for _, cls in SCRIPTS.values()]
    attributes = generation_span(telemetry).attributes
    assert attributes["corevital.outcome.failed"] is True
    assert set(attributes["corevital.outcome.checks"]) == {
        "empty_output",
        "refusal",
        "repetition",
        "truncated",
        "sentence_end",
    }
    assert _counts(telemetry) == {"empty_output": 1, "refusal": 1, "truncated": 1, "none": 2, "repetition": 1}


def test_without_a_tokenizer_no_text_check_runs(instrumented, llama):
    telemetry = instrumented()  # llama's tokenizer registration is weak and per model: use a fresh one
    model = build_model("llama")
    _generate(model, {0: SCRIPTS[1][0], 1: SCRIPTS[3][0]})
    # The refusal is not seen without text; a token-limit finish is truncated without a look at its tail.
    assert _classes(telemetry) == ["none", "truncated"]
    assert set(generation_span(telemetry).attributes["corevital.outcome.checks"]) == {
        "empty_output",
        "repetition",
        "truncated",
    }


@pytest.mark.parametrize(
    ("validator", "expected"),
    [
        (r"\{.*\}", ["none", "format_error", "refusal", "format_error"]),
        (json.loads, ["format_error", "format_error", "refusal", "format_error"]),  # raising = invalid
        (lambda text: text.startswith("w30"), ["format_error", "none", "refusal", "format_error"]),
    ],
    ids=["regex", "raising-callable", "boolean-callable"],
)
def test_format_validator(instrumented, llama, validator, expected):
    telemetry = instrumented(plugin_options={"outcome": {"format": validator, "refusal": ["w50 w51"]}})
    corevital_otel.register_tokenizer(llama, word_tokenizer())
    # Custom phrases replace the default list: row 3's default-list refusal is only a format error here.
    _generate(llama, {0: "{ w30 } </s>", 1: "w30 w31 </s>", 2: "w50 w51 </s>", 3: SCRIPTS[1][0]})
    assert _classes(telemetry) == expected
    assert "format_error" in generation_span(telemetry).attributes["corevital.outcome.checks"]


def test_engine_error_classifies_every_row(instrumented, llama):
    telemetry = instrumented()
    with pytest.raises(IndexError):
        llama.generate(input_ids=torch.full((2, 3), VOCAB + 5), max_new_tokens=3)
    attributes = generation_span(telemetry).attributes
    assert list(attributes["corevital.outcome.class"]) == ["engine_error", "engine_error"]
    assert attributes["error.type"] == "builtins.IndexError"
    assert _counts(telemetry) == {"engine_error": 2}


def test_text_never_leaves_the_plugin(instrumented, llama):
    telemetry = instrumented()
    corevital_otel.register_tokenizer(llama, word_tokenizer())
    _generate(llama, {0: SCRIPTS[1][0]})
    span = generation_span(telemetry)
    assert _classes(telemetry) == ["refusal"]
    values = [span.attributes.values()] + [event.attributes.values() for event in span.events]
    exported = json.dumps([list(v) for v in values], default=str)
    assert "cannot" not in exported and "help" not in exported


def test_beam_search_is_not_guessed(instrumented, llama):
    telemetry = instrumented()
    llama.generate(input_ids=_prompt(1), max_new_tokens=3, num_beams=2, do_sample=False)
    attributes = generation_span(telemetry).attributes
    assert "corevital.outcome.class" not in attributes
    assert any(lost.startswith("outcome:") for lost in attributes["corevital.capture.lost"])


def test_an_invalid_option_is_a_reported_plugin_failure(instrumented, llama):
    telemetry = instrumented(plugin_options={"outcome": {"refusal": "i cannot"}})
    llama.generate(input_ids=_prompt(1), max_new_tokens=2, do_sample=False)
    lost = generation_span(telemetry).attributes["corevital.capture.lost"]
    assert "plugin outcome failed in corevital_generation_start: TypeError" in lost


@pytest.mark.parametrize(
    ("tail", "expected"),
    [("w30 w31", "truncated"), ("w30 .", "none"), ('w30 . "', "none"), ("w30 { }", "truncated")],
)
def test_sentence_end_rule(tail, expected):
    text = outcome.RowText(word_tokenizer(), torch.tensor(ids(tail)).numpy())
    settings = outcome.Settings.from_options({})
    assert outcome.classify(MAX_NEW_TOKENS, "length", False, text, settings) == expected
    assert outcome.classify(MAX_NEW_TOKENS, "stop", False, text, settings) == "none"


def test_refusal_is_conservative():
    settings = outcome.Settings.from_options({})
    refusal = outcome.RowText(word_tokenizer(), torch.tensor(ids("I cannot help with that .")).numpy())
    mention = outcome.RowText(word_tokenizer(), torch.tensor(ids("I cannot w30 with that .")).numpy())
    assert outcome.classify(6, "stop", False, refusal, settings) == "refusal"
    assert outcome.classify(6, "stop", False, mention, settings) == "none"
    assert outcome.classify(6, "stop", None, mention, settings) == "none"  # no loop evidence: no guess
    assert outcome.classify(1, "stop", None, None, settings) == "empty_output"
    assert EOS not in ids("I cannot")
