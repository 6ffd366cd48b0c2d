"""Plugins that misbehave — garbage results, huge or non-finite values, slowness — cost telemetry, never
the generation; the failing plugin and phase are named on the span and counted; configuration turns a
broken plugin off. (A plugin *raising* in each phase is covered by tests/core/test_failure_isolation.py.)
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import torch

import corevital_otel
from corevital_otel import GenerationResults, MetricSpec, StepCapture, hookimpl
from corevital_otel.plugins import health as health_plugin
from corevital_otel.plugins import logits as logits_plugin
from tests.core.helpers import generation_span, metric_points
from tests.support.otlp_receiver import attributes, exporting_providers
from tests.support.tiny_models import build_model, prompt_batch

from .support import builtin_plugin_names, greedy, plugin_error_counts, plugin_failures

MAX_NEW = 3
ROWS = 2
WAIT_S = 30.0  # upper bound of every wait on another thread; never reached when things work


def _call(model: torch.nn.Module) -> torch.Tensor:
    ids, mask = prompt_batch(batch=ROWS)
    return greedy(model, ids, mask, MAX_NEW)


class GarbagePlugin:
    """Returns or records one kind of garbage; behaves everywhere else."""

    COREVITAL_PLUGIN_NAME = "garbage"

    def __init__(self, kind: str) -> None:
        self.kind = kind

    @hookimpl
    def corevital_declare_metrics(self) -> Any:
        if self.kind == "declare-not-a-spec":
            return ["corevital.garbage.value"]
        return [MetricSpec("corevital.garbage.value", "1", "histogram", "test value")]

    @hookimpl
    def corevital_prompt(self) -> Any:
        return [("corevital.garbage.prompt", 1)] if self.kind == "prompt-not-a-mapping" else None

    @hookimpl
    def corevital_step(self, step: StepCapture) -> Any:
        rows = step.rows
        garbage = {
            "step-not-a-mapping": [step.logits],
            "step-bare-tensor": step.logits,
            "step-name-not-a-string": {7: torch.zeros(rows)},
            "step-value-a-string": {"garbage.value": "high"},
            "step-wrong-rows": {"garbage.value": torch.zeros(rows + 1)},
            "step-huge-array": {"garbage.value": torch.zeros(rows, 1_000_000)},
        }
        return garbage.get(self.kind)

    @hookimpl
    def corevital_summarize(self, results: GenerationResults) -> None:
        if self.kind == "metric-value-not-a-number":
            results.record_metric("corevital.garbage.value", "high")  # type: ignore[arg-type]


# kind -> (phase, error type) the span and the metric must name
GARBAGE = {
    "declare-not-a-spec": ("corevital_declare_metrics", "TypeError"),
    "prompt-not-a-mapping": ("corevital_prompt", "TypeError"),
    "step-not-a-mapping": ("corevital_step", "TypeError"),
    "step-bare-tensor": ("corevital_step", "TypeError"),
    "step-name-not-a-string": ("corevital_step", "TypeError"),
    "step-value-a-string": ("corevital_step", "TypeError"),
    "step-wrong-rows": ("corevital_step", "TypeError"),
    "step-huge-array": ("corevital_step", "ValueError"),
    "metric-value-not-a-number": ("corevital_summarize", "ValueError"),
}


@pytest.mark.parametrize("kind", list(GARBAGE))
def test_garbage_is_the_plugins_own_failure(kind, instrumented):
    model = build_model("llama")
    reference = [_call(model) for _ in range(2)]
    telemetry = instrumented(plugins=[GarbagePlugin(kind), logits_plugin], builtin_plugins=False)

    outputs = [_call(model) for _ in range(2)]

    assert all(torch.equal(output, expected) for output, expected in zip(outputs, reference, strict=True))
    phase, error_type = GARBAGE[kind]
    spans = telemetry.generation_spans()
    assert len(spans) == 2
    for span in spans:
        assert plugin_failures(span) == {("garbage", phase, error_type)}
        # Nothing else was lost: the other plugin and the core carried on.
        assert len(span.attributes["corevital.capture.lost"]) == 1
        assert len(span.attributes["corevital.steps.logits.entropy"]) == ROWS * MAX_NEW
        assert span.attributes["gen_ai.usage.output_tokens"] == ROWS * MAX_NEW
    failures = plugin_error_counts(telemetry)
    assert set(failures) == {("garbage", phase)}
    assert failures["garbage", phase] >= 2  # at least once per call (step garbage: once per step)
    assert metric_points(telemetry, "corevital.capture.errors") == []


class OddValuesPlugin:
    """Legal but hostile values: NaN/Inf, integer and boolean tensors, tensors that require grad, numpy
    scalars, a NaN metric value, and one very large array attribute."""

    COREVITAL_PLUGIN_NAME = "odd"
    LARGE = 250_000

    @hookimpl
    def corevital_declare_metrics(self) -> list[MetricSpec]:
        return [MetricSpec("corevital.odd.value", "1", "histogram", "test value")]

    @hookimpl
    def corevital_step(self, step: StepCapture) -> dict[str, torch.Tensor]:
        rows = step.rows
        return {
            "odd.nan": torch.full((rows,), float("nan")),
            "odd.inf": torch.full((rows,), float("inf")),
            "odd.integer": torch.arange(rows),
            "odd.boolean": torch.ones(rows, dtype=torch.bool),
            "odd.grad": torch.ones(rows, requires_grad=True),
        }

    @hookimpl
    def corevital_summarize(self, results: GenerationResults) -> None:
        results.set("corevital.odd.nan_scalar", float("nan"))
        results.set("corevital.odd.numpy_scalar", np.float32(0.5))
        results.set("corevital.odd.mixed_finite", np.array([1.0, np.inf, -np.inf, np.nan]))
        results.set("corevital.odd.large", np.arange(self.LARGE, dtype=np.float64))
        results.record_metric("corevital.odd.value", float("nan"))
        results.record_metric("corevital.odd.value", 1.0)


def test_non_finite_and_oversized_values_travel_as_valid_otlp(otlp_receiver):
    model = build_model("gpt2")
    reference = _call(model)
    for tracer_provider, meter_provider in exporting_providers(otlp_receiver, "corevital-reliability"):
        corevital_otel.instrument(
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            plugins=[OddValuesPlugin(), logits_plugin],
            builtin_plugins=False,
            capture_mode="full",
            max_span_kib=0,  # no byte budget: the oversized array must travel (the budget has its tests)
        )
        assert torch.equal(_call(model), reference)
        meter_provider.force_flush()
        assert otlp_receiver.wait_for(lambda: "/v1/metrics" in otlp_receiver.bodies)

    (span,) = otlp_receiver.generation_spans()  # decoded from protobuf: the payload is valid OTLP
    values = attributes(span.attributes)
    assert "corevital.capture.lost" not in values
    assert values["corevital.steps.odd.nan"] == (None,) * (ROWS * MAX_NEW)
    assert values["corevital.steps.odd.inf"] == (None,) * (ROWS * MAX_NEW)
    assert values["corevital.steps.odd.integer"] == (0.0,) * MAX_NEW + (1.0,) * MAX_NEW
    assert values["corevital.steps.odd.boolean"] == (1.0,) * (ROWS * MAX_NEW)
    assert "corevital.odd.nan_scalar" not in values
    assert values["corevital.odd.numpy_scalar"] == 0.5
    assert values["corevital.odd.mixed_finite"] == (1.0, None, None, None)
    assert len(values["corevital.odd.large"]) == OddValuesPlugin.LARGE
    (point,) = otlp_receiver.metrics()["corevital.odd.value"].histogram.data_points
    assert point.count == 1 and point.sum == 1.0  # the NaN recording was dropped, not exported


class BlockingPlugin:
    """Blocks the calls made inside ``corevital_otel.context(attributes={"corevital.context.slow": True})``
    in ``phase`` until released: a plugin that is as slow as the test wants."""

    COREVITAL_PLUGIN_NAME = "blocking"

    def __init__(self, phase: str) -> None:
        self.phase = phase
        self.entered = threading.Event()
        self.release = threading.Event()

    def _maybe_block(self, info: Any, phase: str) -> None:
        if phase == self.phase and info.caller.get("corevital.context.slow") and not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(WAIT_S)

    @hookimpl
    def corevital_step(self, info: Any) -> None:
        self._maybe_block(info, "corevital_step")

    @hookimpl
    def corevital_explain(self, info: Any) -> None:
        self._maybe_block(info, "corevital_explain")


@pytest.mark.parametrize("phase", ["corevital_step", "corevital_explain"])
def test_a_slow_plugin_delays_only_its_own_call(phase, instrumented):
    model = build_model("qwen2")
    reference = _call(model)
    plugin = BlockingPlugin(phase)
    telemetry = instrumented(plugins=[plugin, logits_plugin], builtin_plugins=False)
    slow: dict[str, Any] = {}

    def slow_call() -> None:
        with corevital_otel.context(attributes={"corevital.context.slow": True}):
            slow["output"] = _call(model)

    worker = threading.Thread(target=slow_call)
    worker.start()
    try:
        assert plugin.entered.wait(WAIT_S)
        # The slow call is stuck inside its plugin (mid-generation for the step phase): another call on
        # the same model runs to completion meanwhile; no lock of ours is held across plugin calls.
        assert torch.equal(_call(model), reference)
        (fast_span,) = telemetry.generation_spans()
        assert "corevital.context.slow" not in fast_span.attributes
        assert fast_span.attributes["gen_ai.usage.output_tokens"] == ROWS * MAX_NEW
        assert worker.is_alive()
    finally:
        plugin.release.set()
        worker.join(WAIT_S)
    assert not worker.is_alive()
    assert torch.equal(slow["output"], reference)
    slow_span = next(s for s in telemetry.generation_spans() if "corevital.context.slow" in s.attributes)
    assert "corevital.capture.lost" not in slow_span.attributes
    assert len(slow_span.attributes["corevital.steps.logits.entropy"]) == ROWS * MAX_NEW


def test_a_broken_builtin_plugin_is_switched_off_by_configuration(telemetry, monkeypatch):
    """A built-in plugin breaks; COREVITAL_DISABLED_PLUGINS turns it off, nothing else."""

    @hookimpl(trylast=True)
    def corevital_assess(info, series, results) -> None:
        raise RuntimeError("broken health plugin")

    monkeypatch.setattr(health_plugin, "corevital_assess", corevital_assess)
    model = build_model("mistral")
    reference = _call(model)
    corevital_otel.instrument(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider
    )
    assert torch.equal(_call(model), reference)
    assert ("health", "corevital_assess", "RuntimeError") in plugin_failures(generation_span(telemetry))
    assert plugin_error_counts(telemetry)["health", "corevital_assess"] == 1
    corevital_otel.uninstrument()

    telemetry.spans.clear()
    monkeypatch.setenv("COREVITAL_DISABLED_PLUGINS", "health")
    corevital_otel.instrument(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider
    )
    assert torch.equal(_call(model), reference)
    span = generation_span(telemetry)
    assert plugin_failures(span) == set()
    assert not any(name.startswith("corevital.health.") for name in span.attributes)
    assert "corevital.logits.entropy.mean" in span.attributes
    assert plugin_error_counts(telemetry)["health", "corevital_assess"] == 1  # no new failure


@pytest.mark.parametrize("name", builtin_plugin_names())
def test_disabling_any_builtin_plugin_leaves_the_others_working(name, instrumented):
    model = build_model("gpt2")
    reference = _call(model)
    telemetry = instrumented(disabled_plugins={name})
    assert torch.equal(_call(model), reference)
    span = generation_span(telemetry)
    assert plugin_failures(span) == set()
    assert plugin_error_counts(telemetry) == {}
    assert span.attributes["gen_ai.usage.output_tokens"] == ROWS * MAX_NEW
