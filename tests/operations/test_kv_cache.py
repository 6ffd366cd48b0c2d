"""The kv_cache plugin: type, length and bytes of the caches transformers builds, through real generate()."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import transformers

import corevital_otel
from corevital_otel.plugins import kv_cache
from tests.core.helpers import generation_span, metric_points
from tests.support.tiny_models import _COMMON_DECODER, build_model, prompt_batch

PROMPT, NEW = 6, 4
FLOAT32 = 4
# tiny llama: 2 layers, 2 key/value heads of 32 / 4 = 8 dimensions
LAYERS, KV_HEADS, HEAD_DIM = 2, 2, 8


def _kv_bytes(rows: int, positions: int, layers: int = LAYERS) -> int:
    return 2 * layers * rows * KV_HEADS * positions * HEAD_DIM * FLOAT32  # keys and values


def _generate(model, **kwargs):
    ids, mask = prompt_batch(batch=2, length=PROMPT)
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, **kwargs)


def _span(telemetry) -> dict:
    return dict(generation_span(telemetry).attributes)


@pytest.fixture(scope="module")
def llama():
    return build_model("llama")


def test_dynamic_cache(instrumented, llama):
    telemetry = instrumented()
    _generate(llama)
    span = _span(telemetry)
    positions = PROMPT + NEW - 1  # the last token is never fed back
    assert span["corevital.kv_cache.type"] == "dynamic"
    assert span["corevital.kv_cache.class"] == "DynamicCache"
    assert span["corevital.kv_cache.length"] == positions
    assert span["corevital.kv_cache.memory"] == _kv_bytes(2, positions)
    assert (span["corevital.kv_cache.layers"], span["corevital.kv_cache.sliding_layers"]) == (LAYERS, 0)
    assert span["corevital.kv_cache.offloaded"] is False
    assert "corevital.kv_cache.capacity" not in span  # a dynamic cache has no maximum
    [point] = metric_points(telemetry, "corevital.kv_cache.memory")
    assert point.attributes["corevital.kv_cache.type"] == "dynamic"
    assert (point.count, point.sum) == (1, _kv_bytes(2, positions))
    [point] = metric_points(telemetry, "corevital.kv_cache.length")
    assert point.sum == positions


def test_static_cache_costs_its_whole_allocation(instrumented, llama):
    telemetry = instrumented()
    _generate(llama, cache_implementation="static")
    span = _span(telemetry)
    capacity = span["corevital.kv_cache.capacity"]
    assert span["corevital.kv_cache.type"] == "static"
    assert span["corevital.kv_cache.length"] == PROMPT + NEW - 1
    assert capacity >= PROMPT + NEW - 1
    # Preallocated keys and values, plus one int64 position counter per layer
    assert span["corevital.kv_cache.memory"] == _kv_bytes(2, capacity) + LAYERS * 8


def test_sliding_window_cache(instrumented):
    telemetry = instrumented()
    torch.manual_seed(0)
    config = transformers.MistralConfig(**{**_COMMON_DECODER, "sliding_window": 4})
    _generate(transformers.AutoModelForCausalLM.from_config(config).eval())
    span = _span(telemetry)
    assert span["corevital.kv_cache.type"] == "sliding"
    assert span["corevital.kv_cache.sliding_layers"] == LAYERS
    assert span["corevital.kv_cache.capacity"] == 4
    assert span["corevital.kv_cache.length"] == PROMPT + NEW - 1  # positions covered, not positions held


def test_quantized_cache(instrumented, llama):
    telemetry = instrumented()
    _generate(llama, cache_implementation="quantized", cache_config={"backend": "fp8"})
    span = _span(telemetry)
    assert span["corevital.kv_cache.type"] == "quantized"
    assert span["corevital.kv_cache.quantization.bits"] == 8
    # One byte per element instead of four (plus the per-tensor scales)
    assert span["corevital.kv_cache.memory"] < _kv_bytes(2, PROMPT + NEW - 1) / 2


def test_encoder_decoder_cache_counts_both_parts(instrumented):
    telemetry = instrumented()
    _generate(build_model("t5"))
    span = _span(telemetry)
    assert (span["corevital.kv_cache.class"], span["corevital.kv_cache.type"]) == (
        "EncoderDecoderCache",
        "dynamic",
    )
    assert span["corevital.kv_cache.length"] == NEW  # decoder positions: the start token and 3 generated
    # t5 tiny: 2 layers x 4 heads x 8 dims; self-attention over NEW positions, cross-attention over PROMPT
    per_position = 2 * 2 * 2 * 4 * 8 * FLOAT32
    assert span["corevital.kv_cache.memory"] == per_position * (NEW + PROMPT)


def test_no_cache(instrumented, llama):
    telemetry = instrumented()
    _generate(llama, use_cache=False)
    span = _span(telemetry)
    assert span["corevital.kv_cache.type"] == "none"
    assert "corevital.kv_cache.memory" not in span
    assert metric_points(telemetry, "corevital.kv_cache.memory") == []


def test_declared_budget_groups_the_metrics(instrumented, llama):
    telemetry = instrumented()
    for budget in (256, 512):
        context = {"corevital.context.cache_budget": budget, "corevital.context.cache_compression": "snapkv"}
        with corevital_otel.context(attributes=context):
            _generate(llama)
    points = metric_points(telemetry, "corevital.kv_cache.memory")
    assert sorted(p.attributes["corevital.kv_cache.budget"] for p in points) == ["256", "512"]
    assert {p.attributes["corevital.kv_cache.compression"] for p in points} == {"snapkv"}
    spans = telemetry.generation_spans()
    assert [s.attributes["corevital.context.cache_budget"] for s in spans] == [256, 512]


def test_offloaded_cache_type():
    # DynamicCache(offloading=True) opens a device stream at construction, which fails under a CUDA build
    # of torch without a driver (PyPI's torch on these machines): set the flag the way the cache keeps it.
    cache = transformers.DynamicCache()
    cache.offloading = True
    # Filled through the layer: the cache's own update would offload to a CUDA stream.
    cache.layers.append(transformers.cache_utils.DynamicLayer())
    cache.layers[0].update(torch.zeros(1, KV_HEADS, 3, HEAD_DIM), torch.zeros(1, KV_HEADS, 3, HEAD_DIM))
    facts = kv_cache.cache_facts(cache)
    assert (facts.type, facts.offloaded, facts.length) == ("offloaded", True, 3)
    assert facts.memory == 2 * KV_HEADS * 3 * HEAD_DIM * FLOAT32
    assert kv_cache.cache_facts(None) is None


def test_memory_counts_each_storage_once():
    keys = torch.zeros(1, KV_HEADS, 5, HEAD_DIM)
    scale = torch.ones(())
    # A window kept as a view costs its whole storage; a tensor held twice is one allocation.
    layer = SimpleNamespace(keys=keys[:, :, -2:], values=keys, quantized=(keys, {"scale": scale}))
    assert kv_cache.memory_bytes([layer]) == keys.numel() * FLOAT32 + FLOAT32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="peak device memory is reported on CUDA only")
def test_peak_device_memory_on_cuda(instrumented):
    telemetry = instrumented()
    _generate(build_model("llama").cuda())
    span = _span(telemetry)
    assert span["corevital.device.memory.peak"] >= span["corevital.device.memory.peak_increase"] > 0
    assert metric_points(telemetry, "corevital.device.memory.peak")


def test_no_peak_memory_off_cuda(instrumented, llama):
    telemetry = instrumented()
    _generate(llama)
    assert "corevital.device.memory.peak" not in _span(telemetry)
