"""The analysis plugins with every built-in plugin on tiny models: capture modes, interventions, live
per-step callbacks, and risk that does not saturate on healthy runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers.generation.streamers import BaseStreamer

import corevital_otel
from corevital_otel.commands.calibrate import calibrate
from tests.support.tiny_models import build_model, prompt_batch

NEW_TOKENS = 8


def generate(model, batch: int = 2, new_tokens: int = NEW_TOKENS, **kwargs):
    ids, mask = prompt_batch(batch=batch)
    kwargs.setdefault("min_new_tokens", new_tokens)
    return model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, **kwargs)


def inject_nan(model, layer: int, from_call: int, row: int = 0):
    """From the ``from_call``-th forward of decoder layer ``layer`` on (0 = prefill = step 0), row
    ``row``'s output at the new position becomes NaN."""
    calls = {"count": 0}

    def hook(module, args, output):
        index = calls["count"]
        calls["count"] += 1
        if index < from_call:
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[row, -1] = float("nan")
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    return model.model.layers[layer].register_forward_hook(hook)


def looping_gpt2():
    """GPT-2 whose blocks add nothing and whose positions are blank: greedy decoding repeats a token."""
    model = build_model("gpt2")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("c_proj.weight", "c_proj.bias")) or "wpe" in name:
                parameter.zero_()
    return model


class FakeTokenizer:
    """Enough of a tokenizer for calibrate(): a prompt string names a prompt_batch seed."""

    pad_token_id, eos_token_id = 0, 2

    def __call__(self, text: str, return_tensors: str = "pt"):
        ids, mask = prompt_batch(batch=1, length=6, seed=int(text))
        return {"input_ids": ids, "attention_mask": mask}


def write_baseline(model, path, do_sample: bool = False):
    prompts = [str(seed) for seed in range(10, 16)]
    document = calibrate(model, FakeTokenizer(), prompts, max_new_tokens=12, do_sample=do_sample)
    path.write_text(json.dumps(document))
    return str(path)


def span_of(telemetry):
    (span,) = telemetry.generation_spans()
    return span


def step_events(span):
    return [event for event in span.events if event.name == "corevital.step"]


# -- capture modes -------------------------------------------------------------------------------


def test_summary_mode_keeps_decisions_drops_detail_and_skips_unconsumed_work(instrumented):
    seen: list[set[str]] = []
    telemetry = instrumented(
        capture_mode="summary", on_step=lambda info, index, values: seen.append(set(values))
    )
    generate(build_model("llama"))
    attributes = span_of(telemetry).attributes
    assert len(attributes["corevital.risk.score"]) == 2
    assert len(attributes["corevital.narrative"]) == 2 and len(attributes["corevital.prompt.hash"]) == 2
    detail = [name for name in attributes if name.startswith(("corevital.steps.", "corevital.layers."))]
    assert detail == ["corevital.steps.count"]
    assert step_events(span_of(telemetry)) == [] and "corevital.capture.escalated" not in attributes
    # Compute saved: per-layer detail nothing consumes in summary mode is never computed.
    assert seen and all("attention.layers.normalized_entropy.mean" not in names for names in seen)
    assert all("risk.running" in names and "logits.entropy" in names for names in seen)
    points = telemetry.metrics()
    assert len(points["corevital.risk.score"]) == 1 and points["corevital.risk.score"][0].count == 2
    assert sum(point.value for point in points["corevital.generations"]) == 2


def test_full_mode_exports_the_running_risk_series_and_events(instrumented):
    telemetry = instrumented(capture_mode="full")
    generate(build_model("qwen2"))
    span = span_of(telemetry)
    running = span.attributes["corevital.steps.risk.running"]
    assert len(running) == 2 * NEW_TOKENS and all(0.0 <= value <= 1.0 for value in running)
    assert all("corevital.risk.running" in event.attributes for event in step_events(span))
    assert len(span.attributes["corevital.fingerprint.vector"]) % 2 == 0


@pytest.mark.parametrize(("threshold", "escalated"), [(1.0, False), (0.0, True)])
def test_on_risk_escalates_on_the_risk_threshold(instrumented, threshold, escalated):
    telemetry = instrumented(
        capture_mode="on_risk", plugin_options={"risk": {"escalate_threshold": threshold}}
    )
    generate(build_model("mistral"), batch=1, new_tokens=4)
    attributes = span_of(telemetry).attributes
    assert attributes["corevital.capture.escalated"] is escalated
    assert ("corevital.steps.risk.running" in attributes) is escalated
    assert len(step_events(span_of(telemetry))) == 4  # every step of 4: in full detail or compact


def test_on_risk_escalates_on_a_serious_flag_in_the_same_pass(instrumented):
    telemetry = instrumented(capture_mode="on_risk", plugin_options={"risk": {"escalate_threshold": 1.0}})
    model = build_model("llama")
    inject_nan(model, layer=1, from_call=2)
    generate(model)
    attributes = span_of(telemetry).attributes
    assert attributes["corevital.capture.escalated"] is True
    assert attributes["corevital.risk.score"][0] == 1.0
    assert "corevital.steps.logits.entropy" in attributes  # full detail of the one and only pass


# -- interventions with the real plugins ---------------------------------------------------------


def _stopped_span_is_complete(span, row_stopped_at: int):
    attributes = span.attributes
    assert span.end_time is not None and span.status.is_ok
    assert attributes["gen_ai.response.finish_reasons"][0] == "intervention"
    assert attributes["gen_ai.usage.output_tokens"] == row_stopped_at + 1 + NEW_TOKENS
    assert attributes["corevital.intervention.stopped"] is True
    assert len(attributes["corevital.narrative"]) == 2 and len(attributes["corevital.risk.score"]) == 2


def test_nan_policy_stops_the_broken_row(instrumented):
    telemetry = instrumented(intervene=["nan"])
    model = build_model("llama")
    inject_nan(model, layer=1, from_call=3)
    output = generate(model)
    span = span_of(telemetry)
    assert span.attributes["corevital.intervention.reasons"] == ("nan", "")
    assert span.attributes["corevital.intervention.steps"] == (3, -1)
    _stopped_span_is_complete(span, 3)
    assert output.shape[1] == prompt_batch(batch=2)[0].shape[1] + NEW_TOKENS  # row 1 ran to the end


def test_risk_policy_stops_when_running_risk_crosses_the_threshold(instrumented):
    telemetry = instrumented(intervene=["risk"])  # default threshold 0.9: only NaN/Inf gets there here
    model = build_model("llama")
    inject_nan(model, layer=1, from_call=3)
    generate(model)
    span = span_of(telemetry)
    attributes = span.attributes
    assert attributes["corevital.intervention.reasons"] == ("risk", "")
    assert attributes["corevital.intervention.steps"] == (3, -1)
    _stopped_span_is_complete(span, 3)
    assert attributes["corevital.risk.score"][0] == 1.0 and attributes["corevital.risk.score"][1] < 1.0
    assert (
        attributes["corevital.blame.top_layer"][0] == 1
        and "nonfinite" in attributes["corevital.blame.top_reasons"][0]
    )
    narrative = attributes["corevital.narrative"][0]
    assert "Generation was stopped at step 3 by the risk intervention." in narrative
    assert "NaN values first appeared at step 3 in layer 1." in narrative
    (point,) = telemetry.metrics()["corevital.interventions"]
    assert point.value == 1 and point.attributes["corevital.intervention.reason"] == "risk"


def test_risk_policy_on_a_continuous_threshold_matches_the_exported_series(instrumented):
    model = build_model("gpt2")
    reference = instrumented(capture_mode="full")
    generate(model, batch=1)
    running = span_of(reference).attributes["corevital.steps.risk.running"]
    threshold = round(float(np.max(running)) - 1e-3, 4)
    first_crossing = int(np.argmax(np.asarray(running) >= threshold))
    corevital_otel.uninstrument()
    reference.spans.clear()
    telemetry = instrumented(intervene=["risk"], intervention_risk_threshold=threshold)
    generate(model, batch=1)
    assert span_of(telemetry).attributes["corevital.intervention.steps"] == first_crossing  # one row


def test_repetition_policy_stops_a_looping_generation(instrumented):
    telemetry = instrumented(intervene=["repetition"])
    output = generate(looping_gpt2(), batch=1, new_tokens=16, min_new_tokens=0)
    span = span_of(telemetry)
    assert span.attributes["corevital.intervention.reasons"] == "repetition"  # one row: a plain value
    step = span.attributes["corevital.intervention.steps"]
    assert 0 < step < 15 and output.shape[1] == prompt_batch(batch=1)[0].shape[1] + step + 1
    assert span.attributes["gen_ai.response.finish_reasons"] == ("intervention",)
    assert "repetition_loop" in span.attributes["corevital.risk.factors"]


# -- live, during generation ---------------------------------------------------------------------


class LoggingStreamer(BaseStreamer):
    def __init__(self, log: list) -> None:
        self.log = log

    def put(self, value) -> None:
        self.log.append(("token", value.reshape(-1).tolist()))

    def end(self) -> None:
        self.log.append(("end",))


def test_on_step_streams_metrics_interleaved_with_the_streamers_tokens(instrumented):
    log: list = []

    def on_step(info, index, values):
        entropy = values["logits.entropy"]
        assert entropy.shape == (info.rows,) and values["risk.running"].shape == (info.rows,)
        log.append(("step", index, float(entropy[0])))

    instrumented(on_step=on_step)
    generate(build_model("llama"), batch=1, streamer=LoggingStreamer(log))
    kinds = [entry[0] for entry in log]
    steps = [entry for entry in log if entry[0] == "step"]
    assert [entry[1] for entry in steps] == list(range(NEW_TOKENS))
    assert all(np.isfinite(entry[2]) for entry in steps)
    # put(prompt), then each generated token is followed by its step's metrics before the next token.
    tokens = [i for i, kind in enumerate(kinds) if kind == "token"][1:]
    # Live, not replayed afterwards: all but the last step (whose token is known only at the end)
    # reached the callback before the streamer's end.
    assert sum(1 for kind in kinds[: kinds.index("end")] if kind == "step") == NEW_TOKENS - 1
    for index in range(NEW_TOKENS - 1):
        step_position = log.index(steps[index])
        assert tokens[index] < step_position < tokens[index + 1]


# -- healthy runs do not saturate -----------------------------------------------------------------


# Random GPT-2 and T5 weights loop on one token under greedy decoding (a real repetition loop, rightly
# high risk): their healthy runs sample.
@pytest.mark.parametrize(
    ("family", "do_sample"),
    [("gpt2", True), ("llama", False), ("qwen2", False), ("mixtral", False), ("t5", True)],
)
def test_a_healthy_run_scores_low_against_its_own_baseline(instrumented, family, do_sample, tmp_path):
    model = build_model(family)
    torch.manual_seed(0)
    path = write_baseline(model, tmp_path / "baseline.json", do_sample)
    telemetry = instrumented(capture_mode="summary", plugin_options={"baseline": {"path": path}})
    for seed in (1, 2, 3):
        ids, mask = prompt_batch(batch=1, seed=seed)
        model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=do_sample)
    for span in telemetry.generation_spans():
        attributes = span.attributes
        assert attributes["corevital.risk.calibration"] == "baseline:baseline.json"
        score = attributes["corevital.risk.score"]  # one row: a plain value
        assert score < 0.5, (family, score, attributes["corevital.risk.factors"])
        assert attributes["corevital.baseline.divergence"] < 0.6


def test_without_a_baseline_a_flag_free_run_never_reaches_one(instrumented):
    telemetry = instrumented(capture_mode="summary")
    generate(build_model("llama"))
    attributes = span_of(telemetry).attributes
    assert attributes["corevital.risk.calibration"] == "family:llama"
    assert all(score < 1.0 for score in attributes["corevital.risk.score"])
