"""What the capture hands to plugins equals transformers' own view of the same generation.

References come from transformers' ``output_*`` flags: ``logits`` are the raw logits, ``scores`` the
processed ones, ``hidden_states`` the per-layer outputs (the last one after the final norm), and
``attentions`` the eager attention weights (an sdpa model returns none).
"""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
import torch
import transformers

from corevital_otel import StepCapture, hookimpl
from corevital_otel.capture.session import CaptureSession
from corevital_otel.capture.stash import _LayerKeys
from corevital_otel.generation import GenerationCall
from tests.support.tiny_models import FAMILIES, build_model, prompt_batch

from .helpers import eos_and_pad, generated_tokens

MAX_NEW = 4


def _decoder_outputs(output, name: str):
    """``hidden_states``/``attentions`` of a decoder-only output, ``decoder_*`` of a seq2seq one."""
    return getattr(output, f"decoder_{name}", None) or getattr(output, name)


@pytest.mark.parametrize("family", FAMILIES)
def test_raw_logits_hidden_states_and_chosen_tokens(family, quiet, recorder):
    model = build_model(family)
    ids, mask = prompt_batch(batch=2, length=6, pad_first=2)
    telemetry = quiet(recorder)
    torch.manual_seed(7)
    output = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=MAX_NEW,
        min_new_tokens=MAX_NEW,
        do_sample=True,
        temperature=0.5,
        top_k=5,
        return_dict_in_generate=True,
        output_logits=True,
        output_scores=True,
        output_hidden_states=True,
    )
    generated = generated_tokens(model, ids, output.sequences)
    hidden_states = _decoder_outputs(output, "hidden_states")
    layers = len(hidden_states[0]) - 1

    assert [step.index for step in recorder.steps] == list(range(MAX_NEW))
    assert len(telemetry.generation_spans()) == 1
    assert len(recorder.prompts) == 1 and torch.equal(recorder.prompts[0], ids)
    for step in recorder.steps:
        raw, processed = output.logits[step.index], output.scores[step.index]
        assert step.rows == 2
        assert torch.equal(step.logits, raw)
        # The sampler's scores (temperature, top-k) are not what the capture reports.
        assert not torch.allclose(step.logits, processed)
        assert torch.equal(step.chosen, generated[:, step.index])
        assert step.hidden.shape == (layers, 2, model.config.get_text_config().hidden_size)
        for layer in range(layers - 1):  # the last one is captured before the final norm
            expected = hidden_states[step.index][layer + 1][:, -1, :]
            torch.testing.assert_close(step.hidden[layer], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_sdpa_attention_rows_equal_eager_attention(family, quiet, recorder):
    ids, mask = prompt_batch(batch=2, length=6, pad_first=2)
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False)
    eager = build_model(family)
    eager.set_attn_implementation("eager")
    reference = eager.generate(**kwargs, return_dict_in_generate=True, output_attentions=True)
    attentions = _decoder_outputs(reference, "attentions")

    model = build_model(family)
    quiet(recorder)
    sequences = model.generate(**kwargs)

    assert model.config._attn_implementation == "sdpa"
    assert recorder.attn_implementations == {"sdpa"}
    assert torch.equal(sequences, reference.sequences)
    is_seq2seq = model.config.is_encoder_decoder
    for step in recorder.steps:
        keys = attentions[step.index][0].shape[-1]
        assert keys == (1 if is_seq2seq else ids.shape[1]) + step.index
        # Decoder self-attention of a seq2seq model sees no padding; row 1's prompt has 2 pad tokens.
        expected_keys = [keys, keys] if is_seq2seq else [keys, keys - 2]
        for layer, eager_weights in enumerate(attentions[step.index]):
            captured = step.attention[layer, :, :, :keys]
            torch.testing.assert_close(captured, eager_weights[:, :, -1, :], rtol=0, atol=2e-6)
            assert step.attention_keys[layer].tolist() == expected_keys
        assert torch.allclose(step.attention.sum(dim=-1), torch.ones(()))


@pytest.mark.parametrize(
    ("extra", "rows", "returned"),
    [
        (dict(num_beams=3, do_sample=False), 6, 2),
        (dict(num_beams=3, num_return_sequences=2, do_sample=False), 6, 4),
        (dict(do_sample=True, num_return_sequences=3), 6, 6),
    ],
    ids=["beams", "beams-returning-2", "sampling-3-returned"],
)
def test_rows_under_beams_and_multiple_returned_sequences(extra, rows, returned, quiet, recorder):
    model = build_model("llama")
    ids, mask = prompt_batch(batch=2, length=5)
    telemetry = quiet(recorder)
    torch.manual_seed(3)
    output = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=3,
        return_dict_in_generate=True,
        output_logits=True,
        **extra,
    )
    assert output.sequences.shape[0] == returned
    assert recorder.infos[0].rows == rows
    assert [step.rows for step in recorder.steps] == [rows] * 3
    for step in recorder.steps:
        assert torch.equal(step.logits, output.logits[step.index])
        assert step.attention.shape[:2] == (model.config.num_hidden_layers, rows)
    attributes = telemetry.generation_spans()[0].attributes
    assert attributes["corevital.sequences.count"] == rows
    assert len(attributes["gen_ai.response.finish_reasons"]) == returned


class _WeakSteps:
    """Keeps only weak references to what each step handed out."""

    COREVITAL_PLUGIN_NAME = "weak"

    def __init__(self) -> None:
        self.references: list[weakref.ref] = []

    @hookimpl
    def corevital_step(self, step: StepCapture) -> dict[str, torch.Tensor]:
        for tensor in (step, step.logits, step.hidden, step.attention):
            self.references.append(weakref.ref(tensor))
        return {"weak.logit_max": step.logits.max(dim=-1).values}


def test_no_step_tensor_outlives_its_step(quiet):
    """Per-step tensors are released once plugins computed their small values: nothing retained grows."""
    model = build_model("gpt2")
    ids, mask = prompt_batch(batch=2, length=5)
    plugin = _WeakSteps()
    telemetry = quiet(plugin)
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    gc.collect()
    assert len(plugin.references) == 8 * 4
    assert [reference() for reference in plugin.references] == [None] * len(plugin.references)
    # The small per-step value did reach the span as a series of 8 steps x 2 rows.
    series = telemetry.generation_spans()[0].attributes["corevital.steps.weak.logit_max"]
    assert len(series) == 16 and all(value is not None for value in series)


def test_a_finished_call_holds_no_reference_to_the_models_cache(instrumented, monkeypatch):
    """The capture references the model's KV cache while the call runs; once generate() returns it lets
    go at once, without waiting for the cycle collector (a finished call's capture sits in reference
    cycles, and a cache on a GPU can be gigabytes)."""
    caches: list[weakref.ref] = []
    initialise = transformers.DynamicCache.__init__

    def recording(self, *args, **kwargs):
        caches.append(weakref.ref(self))
        initialise(self, *args, **kwargs)

    monkeypatch.setattr(transformers.DynamicCache, "__init__", recording)
    instrumented()  # every built-in plugin, as a user runs it
    model = build_model("llama")
    ids, mask = prompt_batch(batch=1, length=5)
    gc.collect()
    gc.disable()
    try:
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
        assert caches and all(cache() is None for cache in caches)
    finally:
        gc.enable()


@pytest.mark.parametrize(
    ("switch", "field"),
    [("capture_logits", "logits"), ("capture_hidden_states", "hidden"), ("capture_attention", "attention")],
)
def test_capture_switches_turn_one_kind_off(switch, field, quiet, recorder):
    model = build_model("qwen2")
    ids, mask = prompt_batch(batch=1, length=4)
    quiet(recorder, **{switch: False})
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False)
    assert len(recorder.steps) == 2
    for step in recorder.steps:
        for name in ("logits", "hidden", "attention"):
            assert (getattr(step, name) is None) == (name == field), name


# Tensor methods that make the host wait for the device (on a GPU each stalls generation).
_HOST_SYNCS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


def _with_flag(state: threading.local, value: bool, function, *args, **kwargs):
    previous = getattr(state, "in_hook", False)
    state.in_hook = value
    try:
        return function(*args, **kwargs)
    finally:
        state.in_hook = previous


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_no_host_sync_while_generating(family, instrumented, monkeypatch):
    """During generation the capture and every built-in plugin's step hook stay on the device.

    On this CPU machine a sync costs nothing, so the test forbids the calls that would sync on a GPU
    while our hooks run; a forbidden call fails the hook, which the span then reports as lost. The
    prompt phase, once per call and returning host values by contract, may transfer.
    """
    state = threading.local()
    for name in _HOST_SYNCS:
        original = getattr(torch.Tensor, name)

        def forbidden(self, *args, _original=original, _name=name, **kwargs):
            if getattr(state, "in_hook", False):
                raise AssertionError(f"host sync Tensor.{_name}() during generation")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, forbidden)
    # The hooks' entry points, and a decoding step's attention short path (the observer calls it first).
    hooks = [(CaptureSession, name) for name in ("_before_forward", "_after_forward", "layer_output")]
    hooks += [(CaptureSession, "observe_attention"), (_LayerKeys, "keep_row")]
    for owner, name in hooks:
        original = getattr(owner, name)

        def guarded(*args, _original=original, **kwargs):
            return _with_flag(state, True, _original, *args, **kwargs)

        monkeypatch.setattr(owner, name, guarded)
    # The prompt phase runs once per call and returns host values by contract: one transfer is allowed.
    deliver_prompt = GenerationCall._deliver_prompt
    monkeypatch.setattr(
        GenerationCall, "_deliver_prompt", lambda call: _with_flag(state, False, deliver_prompt, call)
    )

    telemetry = instrumented()
    ids, mask = prompt_batch(batch=2, length=6, pad_first=2)
    build_model(family).generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False)

    attributes = telemetry.generation_spans()[0].attributes
    assert attributes.get("corevital.capture.lost") is None
    assert attributes["corevital.steps.count"] == MAX_NEW


@pytest.mark.parametrize("family", ["gpt2", "llama", "bart"])
def test_left_padding_is_invisible_to_a_rows_capture(family, quiet, recorder):
    """A left-padded row in a batch is captured as if it had been generated alone."""
    model = build_model(family)
    ids, mask = prompt_batch(batch=2, length=6, pad_first=2)
    # An encoder is padded on the right: BART's positions ignore the mask.
    if model.config.is_encoder_decoder:
        ids[1], mask[1] = ids[1].roll(-2), mask[1].roll(-2)
    real = mask[1].bool()
    quiet(recorder)
    kwargs = dict(max_new_tokens=MAX_NEW, do_sample=False, suppress_tokens=[eos_and_pad(model)[0]])
    batched = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    alone = model.generate(input_ids=ids[1:, real], attention_mask=mask[1:, real], **kwargs)

    assert torch.equal(batched[1, -MAX_NEW:], alone[0, -MAX_NEW:])
    in_batch, solo = recorder.steps[:MAX_NEW], recorder.steps[MAX_NEW:]
    pad = 0 if model.config.is_encoder_decoder else 2  # decoder self-attention has no padding
    for batch_step, solo_step in zip(in_batch, solo, strict=True):
        torch.testing.assert_close(batch_step.logits[1], solo_step.logits[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(batch_step.hidden[:, 1], solo_step.hidden[:, 0], rtol=0, atol=1e-5)
        keys = int(solo_step.attention_keys[0, 0])
        assert batch_step.attention_keys[:, 1].tolist() == solo_step.attention_keys[:, 0].tolist()
        # The row's weights on its padding are exactly zero; on its real keys they match the solo run.
        assert torch.count_nonzero(batch_step.attention[:, 1, :, :pad]) == 0
        real_keys = batch_step.attention[:, 1, :, pad : pad + keys]
        torch.testing.assert_close(real_keys, solo_step.attention[:, 0, :, :keys], rtol=0, atol=1e-5)
