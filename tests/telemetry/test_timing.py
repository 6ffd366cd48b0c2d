"""Time to first token and per-token decode time come from the actual forward passes: checked against a
model whose prefill and decode steps take known minimum times, and against the forward passes' own
timestamps; span attributes and the GenAI metrics agree."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

from corevital_otel.plugins import logits as logits_plugin
from tests.support.tiny_models import build_model, prompt_batch

PREFILL_SECONDS = 0.2
DECODE_SECONDS = 0.02
STEPS = 6


class SlowForward:
    """Forward hooks making the prefill pass last at least PREFILL_SECONDS and each decode pass at least
    DECODE_SECONDS, and recording when each pass ended."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.ended: list[float] = []
        self._handles = [model.register_forward_pre_hook(self._delay), model.register_forward_hook(self._end)]

    def _delay(self, module: torch.nn.Module, args: Any) -> None:
        time.sleep(
            PREFILL_SECONDS if not self.ended else DECODE_SECONDS
        )  # shapes the workload, syncs nothing

    def _end(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        self.ended.append(time.perf_counter())

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _single_value(points: list[Any]) -> float:
    (point,) = points
    assert point.count == 1
    return point.sum


@pytest.fixture
def timed(instrumented):
    telemetry = instrumented(plugins=[logits_plugin], builtin_plugins=False)
    model = build_model("llama")
    slow = SlowForward(model)
    yield telemetry, model, slow
    slow.remove()


def test_first_token_and_decode_times_are_measured_from_the_steps(timed):
    telemetry, model, slow = timed
    ids, mask = prompt_batch(batch=2)
    called = time.perf_counter()
    model.generate(ids, attention_mask=mask, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False)
    (span,) = telemetry.generation_spans()
    first_token = span.attributes["corevital.time_to_first_token"]
    per_token = span.attributes["corevital.time_per_output_token"]
    assert len(slow.ended) == STEPS
    # From the start of generate() to the end of the first (prefill) pass.
    assert PREFILL_SECONDS <= first_token <= slow.ended[0] - called
    # The mean gap between the ends of consecutive passes: decode steps only, prefill excluded.
    assert DECODE_SECONDS <= per_token < PREFILL_SECONDS
    observed = (slow.ended[-1] - slow.ended[0]) / (STEPS - 1)
    assert per_token == pytest.approx(observed, rel=0.05, abs=0.002)
    metrics = telemetry.metrics()
    assert _single_value(metrics["gen_ai.server.time_to_first_token"]) == pytest.approx(first_token)
    assert _single_value(metrics["gen_ai.server.time_per_output_token"]) == pytest.approx(per_token)
    duration = _single_value(metrics["gen_ai.client.operation.duration"])
    assert first_token + per_token * (STEPS - 1) <= duration


def test_one_step_has_a_first_token_time_and_no_per_token_time(timed):
    telemetry, model, _ = timed
    ids, mask = prompt_batch(batch=1)
    model.generate(ids, attention_mask=mask, max_new_tokens=1, do_sample=False)
    (span,) = telemetry.generation_spans()
    assert span.attributes["corevital.time_to_first_token"] >= PREFILL_SECONDS
    assert "corevital.time_per_output_token" not in span.attributes
    metrics = telemetry.metrics()
    assert "gen_ai.server.time_per_output_token" not in metrics
    assert _single_value(metrics["gen_ai.server.time_to_first_token"]) >= PREFILL_SECONDS
