"""Summary mode skips live-only step work nothing reads; a live reader turns it back on."""

from __future__ import annotations

import pytest

import corevital_otel
from tests.support.tiny_models import build_model, prompt_batch


class SeriesSpy:
    COREVITAL_PLUGIN_NAME = "series_spy"

    def __init__(self) -> None:
        self.series_names: set[str] = set()

    @corevital_otel.hookimpl
    def corevital_summarize(self, series):
        self.series_names = set(series.arrays)


@pytest.mark.parametrize(
    ("options", "computed"),
    [
        ({"capture_mode": "summary"}, False),
        ({"capture_mode": "summary", "intervene": ["risk"]}, True),
        ({"capture_mode": "summary", "on_step": lambda *args: None}, True),
        ({"capture_mode": "full"}, True),
    ],
)
def test_running_risk_is_only_computed_when_something_reads_it(instrumented, options, computed):
    spy = SeriesSpy()
    instrumented(plugins=[spy], **options)
    ids, mask = prompt_batch(batch=1)
    build_model("llama").generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    assert ("risk.running" in spy.series_names) is computed
    assert "logits.entropy" in spy.series_names  # the summaries still have their inputs
