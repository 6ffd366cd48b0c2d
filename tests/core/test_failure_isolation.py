"""A failing plugin or capture costs telemetry, never the generation: caught, logged once, counted."""

from __future__ import annotations

import logging
from collections import Counter

import pytest
import torch

from corevital_otel import GenerationResults, MetricSpec, StepCapture, hookimpl
from corevital_otel.plugins import logits as logits_plugin
from tests.support.tiny_models import build_model, prompt_batch

from .helpers import assert_no_hooks, metric_points

PHASES = (
    "corevital_declare_metrics",
    "corevital_generation_start",
    "corevital_prompt",
    "corevital_step",
    "corevital_summarize",
    "corevital_assess",
    "corevital_explain",
)
MAX_NEW = 4
CALLS = 2


class ExplodingPlugin:
    """Implements every phase; raises in ``phase`` and behaves in all the others."""

    COREVITAL_PLUGIN_NAME = "exploding"

    def __init__(self, phase: str) -> None:
        self.phase = phase
        self.calls: Counter[str] = Counter()

    def _enter(self, phase: str) -> None:
        self.calls[phase] += 1
        if phase == self.phase:
            raise RuntimeError(f"boom in {phase}")

    @hookimpl
    def corevital_declare_metrics(self) -> list[MetricSpec]:
        self._enter("corevital_declare_metrics")
        return [MetricSpec("corevital.exploding.value", "1", "histogram", "test value")]

    @hookimpl
    def corevital_generation_start(self) -> None:
        self._enter("corevital_generation_start")

    @hookimpl
    def corevital_prompt(self) -> dict[str, int]:
        self._enter("corevital_prompt")
        return {"corevital.exploding.prompt": 1}

    @hookimpl
    def corevital_step(self, step: StepCapture) -> dict[str, torch.Tensor]:
        self._enter("corevital_step")
        return {"exploding.value": step.logits[:, 0]}

    @hookimpl
    def corevital_summarize(self, results: GenerationResults) -> None:
        self._enter("corevital_summarize")
        results.set("corevital.exploding.summary", 1.0)

    @hookimpl
    def corevital_assess(self) -> None:
        self._enter("corevital_assess")

    @hookimpl
    def corevital_explain(self) -> None:
        self._enter("corevital_explain")


def _generate_twice(model) -> list[torch.Tensor]:
    ids, mask = prompt_batch(batch=2)
    return [
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False)
        for _ in range(CALLS)
    ]


def _generations_losing(kind: str, model, reference, handles, telemetry) -> list:
    """Two calls with ``handles``' hooks on the model (removed after): the same tokens as ``reference``,
    and spans that lost exactly ``kind``, to a tensor changed in place before it was read."""
    try:
        outputs = _generate_twice(model)
    finally:
        for handle in handles:
            handle.remove()
    assert all(torch.equal(output, expected) for output, expected in zip(outputs, reference, strict=True))
    spans = telemetry.generation_spans()
    assert len(spans) == len(reference)  # one span per call: the checks below cannot pass on none
    for span in spans:
        (lost,) = span.attributes["corevital.capture.lost"]
        assert lost.startswith(f"{kind}: ChangedInPlace: the model changed a captured"), lost
    return spans


def _per_call(phase: str) -> int:
    return MAX_NEW if phase == "corevital_step" else 1


def _warnings_about(caplog, word: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and word in r.getMessage()]


@pytest.mark.parametrize("phase", PHASES)
def test_plugin_failure_in_any_phase(phase, quiet, caplog):
    model = build_model("llama")
    reference = _generate_twice(model)
    plugin = ExplodingPlugin(phase)
    caplog.set_level(logging.WARNING, logger="corevital_otel")
    telemetry = quiet(plugin, logits_plugin)

    outputs = _generate_twice(model)

    assert all(torch.equal(output, expected) for output, expected in zip(outputs, reference, strict=True))
    spans = telemetry.generation_spans()
    assert len(spans) == CALLS
    for span in spans:
        lost = span.attributes["corevital.capture.lost"]
        assert f"plugin exploding failed in {phase}: RuntimeError" in lost
        assert "corevital.logits.entropy.mean" in span.attributes  # the other plugin carried on
        assert span.attributes["gen_ai.usage.output_tokens"] == 2 * MAX_NEW
    # Every other phase of the failing plugin still ran on every call (the step phase once per token).
    for other in PHASES[1:]:
        if other != phase:
            assert plugin.calls[other] == CALLS * _per_call(other), other
    errors = [
        point
        for point in metric_points(telemetry, "corevital.plugin.errors")
        if point.attributes["corevital.plugin.name"] == "exploding"
        and point.attributes["corevital.plugin.phase"] == phase
    ]
    # Counted per failure; metrics lost at declaration are counted on every call that lost them.
    assert sum(point.value for point in errors) == CALLS * _per_call(phase)
    assert len(_warnings_about(caplog, "exploding")) == 1


def test_step_value_of_the_wrong_shape_is_a_plugin_failure(quiet):
    class WrongShape:
        COREVITAL_PLUGIN_NAME = "wrong_shape"

        @hookimpl
        def corevital_step(self, step: StepCapture) -> dict[str, torch.Tensor]:
            return {"wrong_shape.value": step.logits[:1, 0]}  # one row instead of step.rows

    model = build_model("gpt2")
    reference = _generate_twice(model)
    telemetry = quiet(WrongShape())
    assert all(torch.equal(a, b) for a, b in zip(_generate_twice(model), reference, strict=True))
    span = telemetry.generation_spans()[0]
    lost = span.attributes["corevital.capture.lost"]
    assert "plugin wrong_shape failed in corevital_step: TypeError" in lost
    assert "corevital.steps.wrong_shape.value" not in span.attributes


def _raise(*args, **kwargs):
    raise RuntimeError("capture exploded")


def _generate_while_failing(model, target: str, quiet, monkeypatch, caplog):
    """Two calls with ``target`` raising: the same tokens as without it, no hook left; the telemetry."""
    reference = _generate_twice(model)
    monkeypatch.setattr(target, _raise)
    caplog.set_level(logging.WARNING, logger="corevital_otel")
    telemetry = quiet(logits_plugin)

    outputs = _generate_twice(model)

    assert all(torch.equal(output, expected) for output, expected in zip(outputs, reference, strict=True))
    assert_no_hooks(model)
    return telemetry


@pytest.mark.parametrize(
    ("target", "kinds", "seq2seq_kinds"),
    [
        # Layer outputs feed the step's hidden states (a seq2seq encoder's: see the prompt test below).
        ("corevital_otel.capture.stash.StepStash.put_hidden", {"hidden_states"}, {"hidden_states"}),
        # Both families' attention is scored for a block of stashed query rows at a time (with or
        # without a mask, every path computes its scores here).
        ("corevital_otel.capture.attention_math._scores", {"attention"}, {"attention"}),
        ("corevital_otel.capture.stash.StepStash.close_slot", {"steps"}, {"steps"}),
        # A decoding step's attention row of a layer already seen this block takes this short path
        # (the tiny BART stops after its first token: none of its steps decodes with a cache).
        ("corevital_otel.capture.stash._LayerKeys.keep_row", {"attention"}, set()),
        # The chosen tokens, kept as references to the next pass' input ids, are read at fold.
        ("corevital_otel.capture.stash.StepStash._chosen", {"chosen_tokens"}, {"chosen_tokens"}),
    ],
    ids=["layer-hooks", "attention", "step-assembly", "attention-short-path", "chosen-tokens"],
)
@pytest.mark.parametrize("family", ["mixtral", "bart"])
def test_capture_failure_never_reaches_the_generation(
    family, target, kinds, seq2seq_kinds, quiet, monkeypatch, caplog
):
    model = build_model(family)
    kinds = seq2seq_kinds if model.config.is_encoder_decoder else kinds
    telemetry = _generate_while_failing(model, target, quiet, monkeypatch, caplog)
    for span in telemetry.generation_spans():
        assert set(span.attributes.get("corevital.capture.lost", ())) == {
            f"{kind}: RuntimeError: capture exploded" for kind in kinds
        }
    counted = Counter()
    for point in metric_points(telemetry, "corevital.capture.errors"):
        counted[point.attributes["corevital.capture.kind"]] += point.value
    assert counted == {kind: CALLS for kind in kinds}
    assert len(_warnings_about(caplog, "capture exploded")) == len(kinds)


def test_a_prompt_hook_failure_never_reaches_the_generation(quiet, monkeypatch, caplog):
    """A seq2seq encoder's layer outputs feed the prompt capture through their own hooks."""
    model = build_model("bart")
    target = "corevital_otel.capture.session._first_tensor"
    telemetry = _generate_while_failing(model, target, quiet, monkeypatch, caplog)
    for span in telemetry.generation_spans():
        assert span.attributes["corevital.capture.lost"] == ("prompt: RuntimeError: capture exploded",)
    assert len(_warnings_about(caplog, "capture exploded")) == 1


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_kept_tensor_changed_in_place_is_never_read(family, quiet):
    """The capture keeps references to each layer's output and query; a model (or a user's hook) that
    changes one in place before the block is folded loses that capture kind for the call, said on the
    span: it is never read as if it were the value the layer produced."""
    from corevital_otel.plugins import hidden_states as hidden_plugin
    from tests.support.plugin_testing import decoder_layers

    model = build_model(family)
    reference = _generate_twice(model)
    layers = decoder_layers(model)
    # The second layer's input is the first layer's output: add 0 in place (values unchanged, version +1).
    def touch(module, args):
        args[0].add_(0.0)

    telemetry = quiet(logits_plugin, hidden_plugin)
    handles = [layers[1].register_forward_pre_hook(touch)]
    for span in _generations_losing("hidden_states", model, reference, handles, telemetry):
        assert "corevital.logits.entropy.mean" in span.attributes
        assert not any(name.startswith("corevital.hidden") for name in span.attributes)


def test_logits_changed_in_place_after_the_step_are_never_read(quiet):
    """The raw logits are kept by reference too: a hook that changes them in place after the capture's
    own hook saw them loses the logit capture for the call (said on the span), never a changed value."""
    model = build_model("llama")
    reference = _generate_twice(model)
    telemetry = quiet(logits_plugin)

    last: list[torch.Tensor] = []

    def keep(module, args, output):
        last[:] = [output.logits]

    def touch(module, args):  # at the next forward pass, after the capture's hook saw the logits
        for logits in last:
            logits.add_(0.0)  # values unchanged, version + 1

    handles = [model.register_forward_hook(keep), model.register_forward_pre_hook(touch)]
    for span in _generations_losing("logits", model, reference, handles, telemetry):
        assert "corevital.logits.entropy.mean" not in span.attributes


def test_input_ids_changed_in_place_after_the_step_are_never_read(quiet):
    """A step's chosen tokens are kept as a reference to the next forward pass' input ids: a hook that
    changes those in place before the block is folded loses the chosen tokens for the call (said on the
    span; no surprisal is computed), never a changed value."""
    model = build_model("llama")
    reference = _generate_twice(model)
    telemetry = quiet(logits_plugin)

    seen: list[torch.Tensor] = []

    def touch(module, args, kwargs):  # before the capture's own pre-hook: the previous pass' ids
        for ids in seen:
            ids.add_(0)  # values unchanged, version + 1
        seen[:] = [kwargs["input_ids"]]

    handles = [model.register_forward_pre_hook(touch, with_kwargs=True)]
    for span in _generations_losing("chosen_tokens", model, reference, handles, telemetry):
        assert None not in span.attributes["corevital.logits.entropy.mean"]
        assert set(span.attributes["corevital.logits.surprisal.mean"]) == {None}  # no token to score
