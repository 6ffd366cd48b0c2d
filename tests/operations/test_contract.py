"""Everything the outcome, kv_cache, drift and probe code emits is in docs/telemetry.md, as documented."""

from __future__ import annotations

import torch

import corevital_otel
from corevital_otel.canary import Canary, Probe
from tests.core import test_contract as core_contract
from tests.support import contract
from tests.support.tiny_models import build_model

from .helpers import word_tokenizer

OPTIONS = {"drift": {"min_samples": 2, "signals": ["entropy"]}}
CALLER = {"corevital.context.cache_budget": 128, "corevital.context.cache_compression": "none"}


def test_names_and_types_are_documented(instrumented):
    telemetry = instrumented(plugin_options=OPTIONS)
    model, tokenizer = build_model("llama"), word_tokenizer()
    corevital_otel.register_tokenizer(model, tokenizer)
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    prompt = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    with corevital_otel.context(attributes=CALLER):
        for _ in range(3):
            model.generate(input_ids=prompt, max_new_tokens=3, do_sample=False)
        with torch.no_grad():
            model.lm_head.weight.div_(40.0)
        model.generate(input_ids=prompt, max_new_tokens=3, do_sample=False)  # drifts
    Canary(
        model,
        tokenizer,
        [Probe("quick", "w30 w31", r"", 2)],
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
    ).run(count=1, interval=0, timeout=60)

    documented = contract.load()
    emitted = {name for span in telemetry.generation_spans() for name in span.attributes}
    assert {"corevital.outcome.class", "corevital.kv_cache.memory", "corevital.drift.detected"} <= emitted
    events = {event.name for span in telemetry.generation_spans() for event in span.events}
    assert "corevital.drift" in events
    assert {"corevital.outcomes", "corevital.drift.events", "corevital.kv_cache.length"} <= set(
        telemetry.metrics()
    )
    assert {"corevital.probe.runs", "corevital.probe.duration", "corevital.probe.risk"} <= set(
        telemetry.metrics()
    )
    assert core_contract.contract_violations(telemetry, documented) == []
    [probe_span] = [span for span in telemetry.finished() if span.name == "corevital.probe quick"]
    values = dict(probe_span.attributes)
    assert documented.undocumented(set(values), documented.span_attributes) == set()
    assert contract.type_mismatches(values, documented.span_attributes, documented) == []
