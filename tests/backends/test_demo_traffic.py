"""deploy/demo_traffic.py, the 5-minute page's traffic: its models are traced under their demo names."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from .repo import ROOT


def test_demo_models_are_traced_under_their_names(instrument_with: Callable[..., object]) -> None:
    spec = importlib.util.spec_from_file_location("demo_traffic", ROOT / "deploy" / "demo_traffic.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    instrument_with(provider)
    for model in demo.tiny_models().values():
        model.generate(
            torch.randint(3, demo.VOCAB, (1, 5)), max_new_tokens=2, do_sample=False, pad_token_id=0
        )
    names = sorted(span.name for span in spans.get_finished_spans())
    assert names == ["text_completion demo-gpt2", "text_completion demo-llama"]
