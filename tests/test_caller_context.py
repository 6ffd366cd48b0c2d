"""corevital_otel.context(): caller metadata lands on the spans inside the block, and only there."""

from __future__ import annotations

import pytest

import corevital_otel
from tests.support.tiny_models import build_model, prompt_batch


def _generate(model) -> None:
    ids, mask = prompt_batch(batch=1)
    model.generate(ids, attention_mask=mask, max_new_tokens=2, do_sample=False)


def test_context_attributes_on_spans_inside_block_only(instrumented):
    telemetry = instrumented(builtin_plugins=False)
    model = build_model("llama")
    with corevital_otel.context(user_id="u-1", session_id="s-1", tags=["beta"]):
        with corevital_otel.context(rag={"context_tokens": 120, "document_ids": ["d1", "d2"]}, user_id="u-2"):
            _generate(model)
        _generate(model)
    _generate(model)
    inner, outer, outside = (span.attributes for span in telemetry.generation_spans())
    assert inner["user.id"] == "u-2" and inner["session.id"] == "s-1"
    assert inner["corevital.rag.context_tokens"] == 120
    assert inner["corevital.rag.document_ids"] == ("d1", "d2")
    assert inner["corevital.tags"] == ("beta",)
    assert outer["user.id"] == "u-1" and "corevital.rag.context_tokens" not in outer
    assert not any(key in outside for key in ("user.id", "session.id", "corevital.tags"))


def test_context_never_reaches_metric_attributes(instrumented):
    telemetry = instrumented(builtin_plugins=False)
    with corevital_otel.context(user_id="u-1", session_id="s-1"):
        _generate(build_model("gpt2"))
    for points in telemetry.metrics().values():
        for point in points:
            assert "user.id" not in point.attributes and "session.id" not in point.attributes


@pytest.mark.parametrize(
    "kwargs",
    [{"rag": {"unknown": 1}}, {"tags": "not-a-list"}, {"attributes": {"custom": 1}}],
)
def test_bad_context_values_raise_clear_errors(kwargs):
    with pytest.raises((ValueError, TypeError)), corevital_otel.context(**kwargs):
        pass
