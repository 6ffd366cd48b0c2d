"""The span budget of docs/telemetry.md: what a span carries in each capture mode, and how big it gets.

Sizes are the real OTLP protobuf encoding of the finished span (opentelemetry-proto), resource included.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import transformers
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

import corevital_otel
from corevital_otel import GenerationResults, hookimpl
from corevital_otel.config import resolve_options
from corevital_otel.demo_model import DEMO_MODEL_DIR
from corevital_otel.export import budget
from corevital_otel.export.events import STEP_EVENT
from tests.support.tiny_models import VOCAB

KIB = 1024
HEALTHY_PROMPT = "    def __repr__(self):\n        return '<%s %r>' % (self.__class__.__name__, "
LOOPING_PROMPT = "import os\nimport sys\n"


@pytest.fixture(scope="module")
def demo():
    tokenizer = transformers.AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    model = transformers.AutoModelForCausalLM.from_pretrained(DEMO_MODEL_DIR)
    model.generation_config.max_length = None  # the demo config's max_length would only warn here
    return model, tokenizer


def generate(telemetry, demo, prompt: str, tokens: int, **kwargs):
    model, tokenizer = demo
    ids = tokenizer(prompt, return_tensors="pt")
    model.generate(**ids, max_new_tokens=tokens, min_new_tokens=tokens, **kwargs)
    return telemetry.generation_spans()[-1]


def otlp_bytes(span) -> int:
    return len(encode_spans([span]).SerializeToString())


def sampled_healthy(telemetry, demo):
    torch.manual_seed(0)
    return generate(telemetry, demo, HEALTHY_PROMPT, 64, do_sample=True, temperature=0.7)


def test_the_default_capture_mode_is_on_risk():
    assert resolve_options({}).capture_mode == "on_risk"


def test_a_healthy_64_token_generation_fits_the_default_budget(instrumented, demo):
    telemetry = instrumented(capture_mode="on_risk")
    span = sampled_healthy(telemetry, demo)
    attributes = dict(span.attributes)
    assert attributes["corevital.capture.escalated"] is False
    assert len(attributes) <= 80
    assert otlp_bytes(span) <= 8 * KIB
    # Scalars a UI can show and filter, at one row.
    assert isinstance(attributes["corevital.risk.score"], float)
    assert attributes["corevital.risk.level"] in ("low", "medium")
    assert isinstance(attributes["corevital.narrative"], str)
    assert isinstance(attributes["corevital.health.flags"], tuple)
    assert not any(name.startswith("corevital.health.per_row.") for name in attributes)
    # A few step events: the first, the last and the earliest flagged; compact per-layer arrays.
    steps = [event.attributes["corevital.step.index"] for event in span.events if event.name == STEP_EVENT]
    assert 0 in steps and 63 in steps and len(steps) <= 4
    assert attributes["corevital.step.events_emitted"] == len(steps)
    assert len(attributes["corevital.layers.hidden_states.l2_norm.mean"]) == 4  # the demo model's layers
    assert len(attributes["corevital.layers.attention.entropy.mean"]) == 4
    series = [name for name in attributes if name.startswith("corevital.steps.")]
    assert series == ["corevital.steps.count"]
    assert "langfuse.observation.level" not in attributes
    # Nothing a trace UI reads as the input or output while content capture is off (Phoenix builds an
    # output from gen_ai.response.model, so it is not set: it would only repeat the request model).
    assert not {"gen_ai.response.model", "gen_ai.input.messages", "gen_ai.output.messages"} & set(attributes)


def test_summary_is_smaller_than_the_default_and_full_keeps_everything(instrumented, demo):
    sizes = {}
    for mode in ("summary", "on_risk", "full"):
        telemetry = instrumented(capture_mode=mode)
        span = sampled_healthy(telemetry, demo)
        sizes[mode] = otlp_bytes(span)
        corevital_otel.uninstrument()
    assert sizes["summary"] < sizes["on_risk"] < sizes["full"] <= 64 * KIB
    assert not span.attributes.get(budget.ATTRIBUTES_DROPPED)


def test_a_risky_generation_escalates_with_a_warning_for_langfuse(instrumented, demo):
    telemetry = instrumented(capture_mode="on_risk")
    span = generate(telemetry, demo, LOOPING_PROMPT, 48, do_sample=False)
    attributes = dict(span.attributes)
    assert attributes["corevital.capture.escalated"] is True
    assert "repetition_loop_detected" in attributes["corevital.health.flags"]
    assert attributes["corevital.risk.level"] == "high"
    assert attributes["langfuse.observation.level"] == "WARNING"
    message = attributes["langfuse.observation.status_message"]
    assert attributes["corevital.narrative"].startswith(message) and message.endswith(".")
    assert attributes["corevital.steps.resolution"] == 1
    assert len(attributes["corevital.steps.logits.entropy"]) == 48
    assert span.status.status_code.name == "UNSET"  # GenAI conventions: not an operation error


def test_nan_output_is_an_error_level_for_langfuse(instrumented, demo):
    telemetry = instrumented(capture_mode="on_risk")
    model, _ = demo

    def nan_logits(module, args, output):
        return torch.full_like(output, float("nan"))

    handle = model.lm_head.register_forward_hook(nan_logits)
    try:
        span = generate(telemetry, demo, HEALTHY_PROMPT, 4, do_sample=False)
    finally:
        handle.remove()
    attributes = dict(span.attributes)
    assert attributes["corevital.health.nan_detected"] is True
    assert attributes["langfuse.observation.level"] == "ERROR"
    assert attributes["langfuse.observation.status_message"]


def test_a_long_full_generation_is_bucketed_under_64_kib(instrumented, demo):
    telemetry = instrumented(capture_mode="full")
    span = generate(telemetry, demo, LOOPING_PROMPT, 240, do_sample=False)
    attributes = dict(span.attributes)
    assert otlp_bytes(span) <= 64 * KIB
    resolution = attributes["corevital.steps.resolution"]
    assert resolution == math.ceil(240 / budget.SERIES_BUCKETS)
    mean = np.array(attributes["corevital.steps.logits.entropy"], dtype=float)
    low = np.array(attributes["corevital.steps.logits.entropy.min"], dtype=float)
    high = np.array(attributes["corevital.steps.logits.entropy.max"], dtype=float)
    assert len(mean) == math.ceil(240 / resolution) <= budget.SERIES_BUCKETS
    assert (low <= mean + 1e-9).all() and (mean <= high + 1e-9).all() and (low < high).any()
    # Step events keep the exact value, inside its bucket's range.
    for event in span.events:
        if event.name == STEP_EVENT:
            step = event.attributes["corevital.step.index"]
            value = event.attributes["corevital.logits.entropy"]
            assert low[step // resolution] - 1e-6 <= value <= high[step // resolution] + 1e-6


def long_tiny_gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=2100, eos_token_id=2, pad_token_id=0
    )
    return transformers.GPT2LMHeadModel(config).eval()


def test_span_size_does_not_grow_with_length_and_grows_linearly_with_rows(instrumented):
    telemetry = instrumented(capture_mode="full")
    model = long_tiny_gpt2()
    sizes = {}
    for rows, tokens in ((1, 300), (1, 2000), (4, 300)):
        ids = torch.randint(3, VOCAB, (rows, 6), generator=torch.Generator().manual_seed(rows))
        model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        span = telemetry.generation_spans()[-1]
        assert span.attributes["corevital.steps.count"] == tokens
        sizes[rows, tokens] = otlp_bytes(span)
    assert sizes[1, 2000] <= 64 * KIB
    assert sizes[1, 2000] <= sizes[1, 300] * 1.1  # bounded resolution: nothing per step on the span
    assert sizes[4, 300] <= 4 * sizes[1, 300]


class _HugeValues:
    """A plugin whose detail array alone would be 160 KiB."""

    COREVITAL_PLUGIN_NAME = "huge"

    @hookimpl
    def corevital_summarize(self, info, series, results: GenerationResults) -> None:
        results.set("corevital.layers.huge.values", np.linspace(0.0, 1.0, 20_000))
        results.set("corevital.huge.small", 1.5)


def test_what_does_not_fit_the_byte_budget_is_left_out_least_important_first(instrumented, demo):
    telemetry = instrumented(capture_mode="full", plugins=[_HugeValues()])
    span = generate(telemetry, demo, HEALTHY_PROMPT, 16, do_sample=False)
    attributes = dict(span.attributes)
    assert otlp_bytes(span) <= 64 * KIB
    assert "corevital.layers.huge.values" not in attributes
    assert attributes[budget.ATTRIBUTES_DROPPED] >= 1
    assert attributes["corevital.huge.small"] == 1.5
    assert attributes["gen_ai.usage.output_tokens"] == 16


def test_per_row_values_are_arrays_with_more_than_one_row(instrumented, demo):
    telemetry = instrumented(capture_mode="on_risk")
    model, tokenizer = demo
    tokenizer.pad_token = tokenizer.eos_token
    ids = tokenizer([HEALTHY_PROMPT, LOOPING_PROMPT], return_tensors="pt", padding=True, padding_side="left")
    model.generate(**ids, max_new_tokens=8, do_sample=False)
    attributes = dict(telemetry.generation_spans()[-1].attributes)
    assert len(attributes["corevital.risk.score"]) == 2
    assert len(attributes["corevital.risk.level"]) == 2
    assert len(attributes["corevital.health.per_row.nan_detected"]) == 2
    assert isinstance(attributes["corevital.risk.max"], float)


def test_buckets_skip_nan_and_keep_the_extremes():
    values = np.array([[1.0], [3.0], [np.nan], [np.nan], [5.0], [7.0]])
    mean, low, high = budget._buckets(values, 3)
    assert mean[:, 0].tolist()[0] == 2.0 and np.isnan(mean[1, 0]) and mean[2, 0] == 6.0
    assert low[:, 0].tolist()[::2] == [1.0, 5.0] and high[:, 0].tolist()[::2] == [3.0, 7.0]
