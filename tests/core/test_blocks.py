"""Blocks of steps change what capture costs, never what it measures.

The capture stashes each step's raw values and plugins compute step series a block at a time; a block of
one step is the per-token computation. Every exported value (span attributes and step events) must be the
same whatever the block length, including the paths that score attention per step: beam search (the cache
is reordered), T5's position bias, a sliding window that evicts keys and a static cache.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import transformers

import corevital_otel
from tests.support.tiny_models import FAMILIES, build_model, prompt_batch

# Wall-clock values differ from run to run; everything else must not.
_TIMING = ("time", "duration", "seconds")


def _comparable(name: str) -> bool:
    return not any(word in name for word in _TIMING)


def _assert_same(name: str, got: Any, expected: Any) -> None:
    if isinstance(expected, (tuple, list)):
        assert isinstance(got, (tuple, list)) and len(got) == len(expected), name
        for item, reference in zip(got, expected, strict=True):
            _assert_same(name, item, reference)
    elif isinstance(expected, float):
        assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(
            expected, rel=1e-4, abs=1e-5
        ), (
            name,
            got,
            expected,
        )
    else:
        assert got == expected, name


def _exported(telemetry, model, block_steps: int, instrumented, **generate: Any) -> list[dict[str, Any]]:
    telemetry.spans.clear()
    instrumented(block_steps=block_steps)
    ids, mask = prompt_batch(batch=2, length=6, pad_first=2)
    torch.manual_seed(5)
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=11, min_new_tokens=11, **generate)
    corevital_otel.uninstrument()
    (span,) = telemetry.generation_spans()
    exported = [{k: v for k, v in span.attributes.items() if _comparable(k)}]
    exported += [{k: v for k, v in event.attributes.items() if _comparable(k)} for event in span.events]
    return exported


def _assert_blocks_change_nothing(telemetry, instrumented, model, **generate: Any) -> None:
    single = _exported(telemetry, model, 1, instrumented, **generate)
    for block_steps in (3, 32):
        blocks = _exported(telemetry, model, block_steps, instrumented, **generate)
        assert len(blocks) == len(single)
        for got, expected in zip(blocks, single, strict=True):
            assert set(got) == set(expected)
            for name, value in expected.items():
                _assert_same(name, got[name], value)
    lost = " ".join(single[0].get("corevital.capture.lost", ()))
    assert not any(kind in lost for kind in ("attention", "hidden_states", "steps", "logits")), lost


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_padded_batch(family, telemetry, instrumented):
    _assert_blocks_change_nothing(telemetry, instrumented, build_model(family), do_sample=False)


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_sampling_and_beams(family, telemetry, instrumented):
    model = build_model(family)
    _assert_blocks_change_nothing(telemetry, instrumented, model, do_sample=True, top_k=5)
    _assert_blocks_change_nothing(telemetry, instrumented, model, num_beams=3, do_sample=False)


def test_sliding_window_that_evicts_keys(telemetry, instrumented):
    config = build_model("mistral").config
    config.sliding_window = 4
    torch.manual_seed(0)
    model = transformers.MistralForCausalLM(config).eval()
    _assert_blocks_change_nothing(telemetry, instrumented, model, do_sample=False)


def test_static_cache(telemetry, instrumented):
    model = build_model("llama")
    _assert_blocks_change_nothing(
        telemetry, instrumented, model, do_sample=False, cache_implementation="static"
    )


def _capture_memory(monkeypatch, model, new_tokens: int, instrumented) -> tuple[int, int]:
    """(largest stash in bytes, bytes of step series per generated step) of one generation."""
    from corevital_otel.capture import stash as stash_module
    from corevital_otel.series import SeriesCollector

    seen = {"stash": 0, "series": 0}
    fold, to_host = stash_module.StepStash.fold, SeriesCollector.to_host

    def measured_fold(self):
        seen["stash"] = max(seen["stash"], self.held_bytes())
        return fold(self)

    def measured_to_host(self, steps, *args):
        chunks = [values for series in self._chunks.values() for _, values in series]
        seen["series"] = sum(values.numel() * values.element_size() for values in chunks)
        return to_host(self, steps, *args)

    monkeypatch.setattr(stash_module.StepStash, "fold", measured_fold)
    monkeypatch.setattr(SeriesCollector, "to_host", measured_to_host)
    instrumented()
    ids, mask = prompt_batch(batch=2, length=6, pad_first=2)
    model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
    )
    corevital_otel.uninstrument()
    return seen["stash"], seen["series"] // new_tokens


def test_capture_memory_is_bounded_at_2000_tokens(monkeypatch, telemetry, instrumented):
    """The stash is the same size at 200 and 2,000 tokens; what stays per step is a few values."""
    config = build_model("llama").config
    config.max_position_embeddings = 4096
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    short_stash, short_per_step = _capture_memory(monkeypatch, model, 200, instrumented)
    long_stash, long_per_step = _capture_memory(monkeypatch, model, 2000, instrumented)
    assert long_stash == short_stash > 0
    assert long_per_step == short_per_step
    rows, layers, heads = 2, config.num_hidden_layers, config.num_attention_heads
    # Per step and row: a few dozen scalars plus a few values per layer; never a vocabulary, a hidden
    # vector or an attention row (the vocabulary alone is 96 floats, a key row up to 2,006).
    assert long_per_step <= rows * 4 * (40 + 12 * layers + heads)
    (span,) = [s for s in telemetry.generation_spans() if s.attributes["corevital.steps.count"] == 2000]
    assert "corevital.capture.lost" not in span.attributes


def test_compiled_forward_with_a_static_cache(telemetry, instrumented):
    """torch.compile'd forward and a static cache: the same tokens; the span says what it could not see.

    A compiled forward looked the attention function up once, while it was traced, and runs without
    module hooks: attention rows and hidden states are not observable there; the raw logits (a hook on
    the model outside its compiled forward) still are. (The ``eager`` backend keeps the test quick; it
    traces exactly as the default backend does.)
    """
    model = build_model("llama")
    model.forward = torch.compile(model.forward, backend="eager")
    ids, mask = prompt_batch(batch=2, length=6, pad_first=2)
    settings = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, cache_implementation="static")
    try:
        expected = model.generate(input_ids=ids, attention_mask=mask, **settings)
        instrumented()
        got = model.generate(input_ids=ids, attention_mask=mask, **settings)
    finally:
        torch._dynamo.reset()  # drop the compiled graphs (and their fake tensors) for the tests after
    assert torch.equal(got, expected)
    (span,) = telemetry.generation_spans()
    lost = " ".join(span.attributes.get("corevital.capture.lost", ()))
    captured = {name.split(".")[1] for name in span.attributes if name.startswith("corevital.")}
    for kind in ("attention", "hidden_states"):
        assert (kind in captured) != (f"{kind}: " in lost), kind  # captured, or said to be lost
    assert "logits" in captured and span.attributes["corevital.steps.count"] == 6


def test_only_cache_layers_that_append_are_scored_later():
    """A stashed row is scored on later keys only when its cache layer keeps earlier keys as they were."""
    from types import SimpleNamespace

    from corevital_otel.capture.session import cache_layer_appends

    dynamic = transformers.DynamicCache()
    dynamic.layers.append(transformers.cache_utils.DynamicLayer())
    assert cache_layer_appends(dynamic, 0)
    assert cache_layer_appends(transformers.EncoderDecoderCache(dynamic, transformers.DynamicCache()), 0)
    assert not cache_layer_appends(dynamic, 1)  # not created yet: unknown
    assert not cache_layer_appends(None, 0)  # no cache: every forward recomputes the keys
    # Decided by class name (transformers moves these classes between modules); QuantizedLayer is abstract.
    quantized = SimpleNamespace(layers=[type("QuantizedLayer", (), {})()])
    assert not cache_layer_appends(quantized, 0)  # re-quantizing rewrites earlier keys
    static = SimpleNamespace(layers=[transformers.cache_utils.StaticLayer(max_cache_len=8)])
    assert not cache_layer_appends(static, 0)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_inference_mode_measures_the_same(family, telemetry, instrumented):
    """Tensors made under torch.inference_mode() keep no version counter, so the capture copies them
    instead of keeping references: every exported value is the one a no_grad generation gives."""
    model = build_model(family)
    expected = _exported(telemetry, model, 32, instrumented, do_sample=False)
    with torch.inference_mode():
        got = _exported(telemetry, model, 32, instrumented, do_sample=False)
    assert len(got) == len(expected)
    for values, reference in zip(got, expected, strict=True):
        assert set(values) == set(reference)
        for name, value in reference.items():
            _assert_same(name, values[name], value)
    assert "corevital.capture.lost" not in got[0]


class _AttentionKeeper:
    """A plugin that keeps every block's attention logits (and a copy of them as they arrived), or only
    notes which storage held them; it also notes whether the weights had been computed when it ran last."""

    COREVITAL_PLUGIN_NAME = "attention_keeper"

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.kept: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.storages: list[int] = []
        self.weights_computed: list[bool] = []

    @corevital_otel.hookimpl(trylast=True)
    def corevital_steps(self, info, block):
        if block.attention_logits is not None:
            self.weights_computed.append(vars(block)["_attention"] is not None)
            self.storages.append(block.attention_logits.untyped_storage().data_ptr())
            if self.keep:
                self.kept.append((block.attention_logits, block.attention_logits.clone()))


@pytest.mark.parametrize("keep", [False, True], ids=["dropped", "kept"])
def test_folds_reuse_their_attention_buffer_unless_a_plugin_kept_the_last_one(keep, instrumented):
    model = build_model("llama")
    keeper = _AttentionKeeper(keep)
    instrumented(block_steps=2, plugins=[keeper])
    ids, mask = prompt_batch(batch=2, length=6, pad_first=0)  # no padding: every block scored in one buffer
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    # The built-in plugins read the logits: no block's weights were computed (a softmax the size of them).
    assert keeper.weights_computed == [False] * 6
    blocks = len(keeper.storages)
    assert blocks == 6
    if keep:  # every block got its own buffer, and what a plugin kept was never written over
        assert len(set(keeper.storages)) == blocks
        for held, as_delivered in keeper.kept:
            assert torch.equal(held, as_delivered)
    else:  # one buffer, grown now and then as the rows widen
        assert len(set(keeper.storages)) <= blocks / 2
