"""Everything a full-capture run emits is in docs/telemetry.md, with the documented type, kind and unit."""

from __future__ import annotations

import pytest
import torch
from opentelemetry.sdk.metrics.export import Histogram, Sum

import corevital_otel
from corevital_otel import GenerationResults, StepCapture, hookimpl
from tests.support import contract
from tests.support.tiny_models import VOCAB, build_model, prompt_batch

from .helpers import eos_and_pad, offline_tokenizer, scripted

# Events the OpenTelemetry SDK itself adds (``span.record_exception``), defined by its conventions.
SDK_EVENTS = {"exception"}


def _metric_kind(metric) -> str:
    if isinstance(metric.data, Histogram):
        return "histogram"
    if isinstance(metric.data, Sum):
        return "counter" if metric.data.is_monotonic else "up_down_counter"
    return type(metric.data).__name__


def contract_violations(telemetry, documented: contract.Contract) -> list[str]:
    """Every emitted name (or type, kind, unit, metric attribute) the contract does not list."""
    problems: list[str] = []
    for span in telemetry.generation_spans():
        attributes = dict(span.attributes)
        undocumented = documented.undocumented(set(attributes), documented.span_attributes)
        problems += [f"span attribute {name}" for name in undocumented]
        problems += contract.type_mismatches(attributes, documented.span_attributes, documented)
        for event in span.events:
            if event.name in SDK_EVENTS:
                continue
            if event.name not in documented.events:
                problems.append(f"span event {event.name}")
                continue
            table = documented.events[event.name]
            values = dict(event.attributes)
            undocumented = documented.undocumented(set(values), table)
            problems += [f"{event.name} attribute {name}" for name in undocumented]
            problems += contract.type_mismatches(values, table, documented)
    data = telemetry.metric_reader.get_metrics_data()
    for resource_metrics in data.resource_metrics if data else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                spec = documented.metrics.get(metric.name)
                if spec is None:
                    problems.append(f"metric {metric.name}")
                    continue
                if (_metric_kind(metric), metric.unit) != (spec.kind, spec.unit):
                    problems.append(f"metric {metric.name}: {_metric_kind(metric)} in {metric.unit!r}")
                for point in metric.data.data_points:
                    for key in set(point.attributes) - spec.attributes:
                        problems.append(f"metric {metric.name} attribute {key}")
    return sorted(set(problems))


def _full_capture_run(instrumented):
    """Every kind of call, every built-in plugin, content and caller context on: the widest output."""
    telemetry = instrumented(capture_content="SPAN_AND_EVENT", intervene={"nan"})
    tokenizer = offline_tokenizer()
    ids, mask = prompt_batch(batch=2, length=6, pad_first=2)
    causal, seq2seq = build_model("llama"), build_model("t5")
    corevital_otel.register_tokenizer(seq2seq, tokenizer)
    caller = dict(
        user_id="u-1",
        session_id="s-1",
        tags=["contract"],
        rag={"context_tokens": 12, "document_ids": ["d-1"], "retriever": "bm25"},
        attributes={"corevital.context.suite": "contract"},
    )
    with corevital_otel.context(**caller):
        torch.manual_seed(0)
        causal.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=6,
            do_sample=True,
            temperature=0.7,
            top_k=20,
            top_p=0.9,
            num_return_sequences=2,
            tokenizer=tokenizer,
            # Row 0 ends on EOS mid-way, so series carry nulls for its finished steps.
            logits_processor=scripted(ids.shape[1], {(0, 2): eos_and_pad(causal)[0]}),
        )
        seq2seq.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, num_beams=2)
        with pytest.raises(IndexError):
            causal.generate(input_ids=torch.full_like(ids, VOCAB + 1), max_new_tokens=2)
    return telemetry


def test_everything_emitted_is_documented(instrumented):
    telemetry = _full_capture_run(instrumented)
    spans = telemetry.generation_spans()
    assert len(spans) == 3
    # The run did reach the wide parts of the contract it is meant to check.
    names = {name for span in spans for name in span.attributes}
    assert {"corevital.steps.logits.entropy", "corevital.logits.entropy.mean", "error.type"} <= names
    assert any(event.name == "corevital.step" for span in spans for event in span.events)
    assert "corevital.token.entropy" in telemetry.metrics()
    assert contract_violations(telemetry, contract.load()) == []


class _UndocumentedPlugin:
    COREVITAL_PLUGIN_NAME = "undocumented"

    @hookimpl
    def corevital_step(self, step: StepCapture) -> dict[str, torch.Tensor]:
        return {"undocumented.series": step.logits[:, 0]}

    @hookimpl
    def corevital_summarize(self, results: GenerationResults) -> None:
        results.set("corevital.undocumented.value", 1.0)
        results.set("corevital.logits.entropy.mean", "not an array")  # documented name, wrong type


def test_an_undocumented_name_is_caught(quiet):
    telemetry = quiet(_UndocumentedPlugin())
    ids, mask = prompt_batch(batch=1)
    build_model("gpt2").generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False)
    problems = contract_violations(telemetry, contract.load())
    assert "span attribute corevital.undocumented.value" in problems
    assert "span attribute corevital.steps.undocumented.series" in problems
    assert "corevital.step attribute corevital.undocumented.series" in problems
    assert "corevital.logits.entropy.mean (double/row): 'not an array'" in problems


def test_placeholders_stand_for_their_listed_values_only():
    documented = contract.load(
        "### Span attributes — core\n\n| name | type |\n|---|---|\n"
        "| `corevital.steps.<series>` | double[] |\n| `corevital.context.<key>` | any |\n\n"
        "### Step series\n\n| series | unit |\n|---|---|\n| `logits.entropy` | bit |\n\n"
        "## Metrics\n\n| name | kind | unit | attributes |\n|---|---|---|---|\n"
        "| `corevital.plugin.errors` | counter | {error} | base, `corevital.plugin.name` |\n"
    )
    names = {"corevital.steps.logits.entropy", "corevital.steps.bogus", "corevital.context.team", "x.y"}
    assert documented.undocumented(names, documented.span_attributes) == {"corevital.steps.bogus", "x.y"}
    errors = documented.metrics["corevital.plugin.errors"]
    assert (errors.kind, errors.unit) == ("counter", "{error}")
    assert errors.attributes == {*contract.BASE_METRIC_ATTRIBUTES, "corevital.plugin.name"}
