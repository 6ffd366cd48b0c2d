"""Decoder-layer outputs reach the capture through a wrapped class ``forward`` (no per-layer hook), or
through a forward hook where the class's forward is not the last to see the output; either way every
layer of every step is captured once, and uninstrument() puts every class back as it was."""

from __future__ import annotations

import functools

import pytest
import torch

import corevital_otel
from corevital_otel.capture import layer_taps
from corevital_otel.capture.layers import locate_layout
from tests.support.tiny_models import build_model, prompt_batch

from .helpers import assert_no_hooks

MAX_NEW = 3


def _reference_hidden(family: str, ids: torch.Tensor, mask: torch.Tensor) -> list[list[torch.Tensor]]:
    """Per layer, its newest position's output at every forward pass of the same generation, recorded by
    forward hooks on a fresh identical model (the last layer's, unlike ``output_hidden_states``', before
    the final norm)."""
    model = build_model(family)
    per_layer: list[list[torch.Tensor]] = []
    handles = []
    for layer in locate_layout(model).layers:
        outputs: list[torch.Tensor] = []
        per_layer.append(outputs)
        handles.append(
            layer.register_forward_hook(
                lambda module, args, output, kept=outputs: kept.append(
                    (output[0] if isinstance(output, tuple) else output)[:, -1].clone()
                )
            )
        )
    model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW, do_sample=False
    )
    for handle in handles:
        handle.remove()
    return per_layer


def _captured_equals_reference(model, family, recorder) -> None:
    ids, mask = prompt_batch(batch=2, length=6, pad_first=1)
    reference = _reference_hidden(family, ids, mask)
    recorder.steps.clear()  # the reference's own steps, when it ran instrumented
    _generate_and_compare(model, ids, mask, reference, recorder)


def _generate_and_compare(model, ids, mask, reference, recorder) -> None:
    model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW, do_sample=False
    )
    assert [step.index for step in recorder.steps] == list(range(MAX_NEW))
    for step in recorder.steps:
        assert step.hidden is not None, f"step {step.index} lost its hidden states"
        for layer in range(step.hidden.shape[0]):
            torch.testing.assert_close(step.hidden[layer], reference[layer][step.index], rtol=0, atol=0)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bart"])
def test_layer_classes_are_tapped_without_hooks_and_put_back(family, quiet, recorder):
    model = build_model(family)
    layer_class = type(locate_layout(model).layers[0])
    before = vars(layer_class).get("forward")
    quiet(recorder)
    _captured_equals_reference(model, family, recorder)
    assert layer_taps.tapped_classes() == (layer_class,)
    assert vars(layer_class)["forward"] is not before
    assert_no_hooks(model)  # the taps are class attributes, not hooks left on the model

    corevital_otel.uninstrument()
    assert layer_taps.tapped_classes() == ()
    assert vars(layer_class).get("forward") is before  # inherited again where it was inherited


def test_a_call_that_attaches_after_uninstrument_taps_no_class(quiet, recorder):
    """A generate() call already under way when uninstrument() runs may put its hooks on after the taps
    came off (CI caught it with 16 threads): it keeps per-layer hooks of its own, captured in full, and
    no class is left wrapped."""
    model = build_model("llama")
    layer_class = type(locate_layout(model).layers[0])
    before = vars(layer_class).get("forward")

    class UninstrumentsAtStart:
        @corevital_otel.hookimpl
        def corevital_generation_start(self, info):
            corevital_otel.uninstrument()  # after the call began, before its capture attaches

    ids, mask = prompt_batch(batch=2, length=6, pad_first=1)
    reference = _reference_hidden("llama", ids, mask)
    quiet(recorder, UninstrumentsAtStart())
    _generate_and_compare(model, ids, mask, reference, recorder)
    assert layer_taps.tapped_classes() == ()
    assert vars(layer_class).get("forward") is before
    assert_no_hooks(model)


def test_a_layer_whose_hook_replaces_its_output_is_captured_after_the_hook(quiet, recorder):
    """The next layer gets what the hook returns: so must the capture (the layer falls back to a hook
    of ours, registered after the user's)."""
    model = build_model("llama")
    layers = locate_layout(model).layers
    doubled = layers[0].register_forward_hook(lambda module, args, output: output * 2)
    quiet(recorder)
    ids, mask = prompt_batch(batch=2, length=6, pad_first=1)
    output = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=MAX_NEW,
        do_sample=False,
        return_dict_in_generate=True,
        output_hidden_states=True,
    )
    doubled.remove()
    for step in recorder.steps:  # (layer 0 is not the last: no final norm in output_hidden_states' view)
        expected = output.hidden_states[step.index][1][:, -1, :]
        torch.testing.assert_close(step.hidden[0], expected, rtol=0, atol=0)


def test_a_layer_with_its_own_forward_attribute_is_hooked(quiet, recorder):
    """accelerate's device hooks replace a module's ``forward`` on the instance: the class's is bypassed."""
    model = build_model("llama")
    for layer in locate_layout(model).layers:
        layer.forward = functools.partial(type(layer).forward, layer)
    quiet(recorder)
    _captured_equals_reference(model, "llama", recorder)
    assert layer_taps.tapped_classes() == ()


def test_a_tapped_subclass_calling_its_tapped_base_reports_each_layer_once(quiet, recorder):
    base_class = type(locate_layout(build_model("llama")).layers[0])

    class ForwardingLayer(base_class):  # type: ignore[misc, valid-type]
        def forward(self, *args, **kwargs):
            return super().forward(*args, **kwargs)

    quiet(recorder)
    base_model = build_model("llama")
    ids, mask = prompt_batch(1, 4)
    base_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2)
    model = build_model("llama")
    for layer in locate_layout(model).layers:
        layer.__class__ = ForwardingLayer
    recorder.steps.clear()
    _captured_equals_reference(model, "llama", recorder)
    assert set(layer_taps.tapped_classes()) == {base_class, ForwardingLayer}


def test_a_wrapper_put_over_the_tap_stays_and_nothing_is_reported_twice(quiet, recorder):
    model = build_model("llama")
    layer_class = type(locate_layout(model).layers[0])
    own = vars(layer_class).get("forward")
    quiet(recorder)
    ids, mask = prompt_batch(1, 4)
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2)
    tap = vars(layer_class)["forward"]

    @functools.wraps(tap)
    def theirs(self, *args, **kwargs):
        return tap(self, *args, **kwargs)

    layer_class.forward = theirs
    try:
        recorder.steps.clear()
        _captured_equals_reference(model, "llama", recorder)  # tapped again over theirs: reported once
        corevital_otel.uninstrument()
        assert vars(layer_class)["forward"] is theirs
    finally:
        if own is None:
            del layer_class.forward
        else:
            layer_class.forward = own


def test_a_compiled_forward_runs_the_layers_own_graph(quiet, recorder):
    """torch.compile traces the tapped forward: the capture branch folds away (no graph break, no guard on
    the session, so no recompilation per generate() call), the tokens are unchanged and the span says the
    hidden states were not seen."""
    ids, mask = prompt_batch(batch=2, length=6, pad_first=1)
    settings = dict(max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW, do_sample=False)
    expected = build_model("llama").generate(input_ids=ids, attention_mask=mask, **settings)
    telemetry = quiet(recorder)
    model = build_model("llama")
    layer = locate_layout(model).layers[0]
    hidden = torch.randn(1, 3, model.config.hidden_size)
    embeddings = model.model.rotary_emb(hidden, torch.arange(3)[None])
    model.forward = torch.compile(model.forward, backend="eager")
    try:
        for _ in range(3):
            assert torch.equal(model.generate(input_ids=ids, attention_mask=mask, **settings), expected)
        compiled_layer = torch.compile(layer, backend="eager", fullgraph=True)  # no graph break in the tap
        with torch.no_grad():
            torch.testing.assert_close(
                compiled_layer(hidden, position_embeddings=embeddings),
                layer(hidden, position_embeddings=embeddings),
            )
    finally:
        torch._dynamo.reset()
    for span in telemetry.generation_spans():
        assert any(lost.startswith("hidden_states: ") for lost in span.attributes["corevital.capture.lost"])
