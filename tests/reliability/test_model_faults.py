"""NaN/Inf produced inside the model (injected by a forward hook): the generation is unchanged, the
health flags and risk 1.0 say so, and the payload is valid OTLP with no non-finite number in it."""

from __future__ import annotations

import math

import pytest
import torch

import corevital_otel
from corevital_otel.capture.layers import locate_layout
from tests.support.otlp_receiver import attributes, exporting_providers
from tests.support.tiny_models import build_model, prompt_batch

from .support import greedy, messages_in

MAX_NEW = 5
BROKEN_STEP = 2  # the forward pass (step) whose layer output is poisoned
BROKEN_ROW = 0


def _poison(model: torch.nn.Module, layer: int, value: float) -> torch.utils.hooks.RemovableHandle:
    """From step BROKEN_STEP of each call on, BROKEN_ROW's output of decoder ``layer`` becomes ``value``.

    Steps are counted from the prompt's width: the hook works the same with and without instrumentation.
    """

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if hidden.shape[1] == 1 and hook.decoded + 1 == BROKEN_STEP:  # the prefill pass is step 0
            hidden = hidden.clone()
            hidden[BROKEN_ROW] = value
        hook.decoded = 0 if hidden.shape[1] > 1 else hook.decoded + 1
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    hook.decoded = 0
    return locate_layout(model).layers[layer].register_forward_hook(hook)


def _finite_everywhere(message) -> bool:
    for nested in messages_in(message):
        for descriptor, value in nested.ListFields():
            if descriptor.type in (descriptor.TYPE_DOUBLE, descriptor.TYPE_FLOAT):
                numbers = value if descriptor.is_repeated else (value,)
                if not all(math.isfinite(number) for number in numbers):
                    return False
    return True


@pytest.mark.parametrize(
    ("value", "layer", "flag", "factor"),
    [(float("nan"), 0, "nan_detected", "nan"), (float("inf"), 1, "inf_detected", "inf")],
    ids=["nan-first-layer", "inf-last-layer"],
)
def test_non_finite_inside_the_model_flags_risk_one_and_valid_otlp(value, layer, flag, factor, otlp_receiver):
    model = build_model("llama")
    ids, mask = prompt_batch(batch=2)
    handle = _poison(model, layer, value)
    reference = greedy(model, ids, mask, MAX_NEW)
    for tracer_provider, meter_provider in exporting_providers(otlp_receiver, "corevital-reliability"):
        corevital_otel.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
        output = greedy(model, ids, mask, MAX_NEW)
        meter_provider.force_flush()
        assert otlp_receiver.wait_for(lambda: "/v1/metrics" in otlp_receiver.bodies)
    handle.remove()

    assert torch.equal(output, reference)
    (span,) = otlp_receiver.generation_spans()
    values = attributes(span.attributes)
    assert values[f"corevital.health.{flag}"] is True
    assert values[f"corevital.health.per_row.{flag}"] == (True, False)
    assert values[f"corevital.health.first_step.{flag}"] == BROKEN_STEP
    assert layer in values[f"corevital.health.layers.{flag}"]
    risk = values["corevital.risk.score"]
    assert risk[BROKEN_ROW] == 1.0 and risk[1] < 1.0
    assert values["corevital.risk.level"][BROKEN_ROW] == "high"
    assert factor in values["corevital.risk.factors"][BROKEN_ROW].split(",")
    assert values["gen_ai.usage.output_tokens"] == 2 * MAX_NEW
    assert "corevital.capture.lost" not in values
    # Non-finite values travel as OTLP's empty value or are left out: no NaN/Inf anywhere on the wire.
    assert all(_finite_everywhere(span) for span in otlp_receiver.spans())
    assert all(_finite_everywhere(metric) for metric in otlp_receiver.metrics().values())
    flags = otlp_receiver.metrics()["corevital.health.flags"].sum.data_points
    fired = {
        attributes(point.attributes)["corevital.health.flag"]: getattr(point, point.WhichOneof("value"))
        for point in flags
    }
    assert fired[flag] == 1
