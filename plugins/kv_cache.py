"""KV-cache telemetry: which cache transformers used for a generation, how long and how large it ended.

Read once per generation, after generate() returned, from the cache object the core hands over as
``info.cache``; nothing runs per step. On a CUDA model the plugin also reports the device's peak memory
during the call: it resets CUDA's peak counter of the model's device when the generation starts
(``torch.cuda.reset_peak_memory_stats``), so concurrent generations on one device share that peak. Turn it
off with ``plugin_options={"kv_cache": {"peak_memory": False}}``.

A caller sweeping cache budgets or compression settings declares them around the call::

    with corevital_otel.context(attributes={"corevital.context.cache_budget": 512,
                                            "corevital.context.cache_compression": "snapkv"}):
        model.generate(...)

They are on the span as caller context already; this plugin adds them to its metrics so a dashboard can
group by them (they are configuration values: keep them to a handful per sweep).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from corevital_otel import GenerationInfo, GenerationResults, MetricSpec, hookimpl
from corevital_otel.plugins import _options

COREVITAL_PLUGIN_NAME = "kv_cache"


class KvCacheOptions(_options.PluginOptions):
    peak_memory: Any = _options.option(True, "on CUDA, read the allocator's peak around each call")


COREVITAL_OPTIONS = KvCacheOptions

BUDGET_KEY = "corevital.context.cache_budget"
COMPRESSION_KEY = "corevital.context.cache_compression"
# Caller context key -> metric attribute.
CALLER_METRIC_ATTRIBUTES: Mapping[str, str] = {
    BUDGET_KEY: "corevital.kv_cache.budget",
    COMPRESSION_KEY: "corevital.kv_cache.compression",
}
BYTE_BUCKETS = tuple(float(4**power) for power in range(5, 19))  # 1 KiB .. 64 GiB
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)


def _classes(layer: Any) -> set[str]:
    # Class names along the MRO: robust to transformers adding layer subclasses or moving modules.
    return {klass.__name__ for klass in type(layer).__mro__}


def _layer_kind(layer: Any) -> str:
    classes = _classes(layer)
    if classes & {"BaseQuantizedLayer", "QuantizedLayer"}:
        return "quantized"
    if "StaticLayer" in classes:
        return "static"
    if "DynamicLayer" in classes:
        return "dynamic"
    return "other"


def _cache_layers(cache: Any) -> list[Any]:
    """Layers that hold keys and values (dummy layers of KV-sharing or attention-free blocks left out)."""
    return [layer for layer in getattr(cache, "layers", ()) if "DummyLayer" not in _classes(layer)]


def cache_type(cache: Any) -> str:
    """``none``, ``dynamic``, ``sliding`` (every layer a sliding window), ``hybrid`` (some), ``static``,
    ``quantized``, ``offloaded`` or ``other``. An encoder-decoder cache is typed by its self-attention
    part."""
    if cache is None:
        return "none"
    cache = getattr(cache, "self_attention_cache", cache)
    layers = _cache_layers(cache)
    kinds = {_layer_kind(layer) for layer in layers}
    if getattr(cache, "offloading", False):
        return "offloaded"
    if "quantized" in kinds:
        return "quantized"
    if kinds == {"static"}:
        return "static"
    if kinds == {"dynamic"}:
        sliding = sum(bool(getattr(layer, "is_sliding", False)) for layer in layers)
        return "sliding" if sliding == len(layers) else "hybrid" if sliding else "dynamic"
    return "other"


def _tensors(value: Any, depth: int = 2) -> Iterator[torch.Tensor]:
    """Tensors in an attribute value: a tensor, or inside tuples, lists and dicts (quantized states are
    ``(data, scale)`` pairs or ``(data, metadata)``)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif depth and isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item, depth - 1)
    elif depth and isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item, depth - 1)


def memory_bytes(layers: Iterable[Any]) -> int:
    """Bytes of the storage behind every tensor the layers hold, each storage counted once.

    Storage, not the tensors' own size: a sliding window kept as a view of a larger tensor keeps the whole
    allocation alive, and that is what it costs.
    """
    seen: set[tuple[str, int]] = set()
    total = 0
    for layer in layers:
        for value in vars(layer).values():
            for tensor in _tensors(value):
                if tensor.device.type == "meta":
                    continue
                try:
                    storage = tensor.untyped_storage()
                    key = (str(tensor.device), storage.data_ptr())
                    size = storage.nbytes()
                except (RuntimeError, NotImplementedError, TypeError):  # tensor subclasses without storage
                    key, size = (str(tensor.device), id(tensor)), tensor.numel() * tensor.element_size()
                if key not in seen:
                    seen.add(key)
                    total += int(size)
    return total


def _quantization_bits(layers: Iterable[Any]) -> int | None:
    for layer in layers:
        bits = getattr(layer, "nbits", None)
        if bits is None and getattr(layer, "fp8_dtype", None) is not None:
            bits = torch.finfo(layer.fp8_dtype).bits
        if bits is not None:
            return int(bits)
    return None


@dataclass(frozen=True)
class CacheFacts:
    type: str
    class_name: str
    length: int  # positions the cache covers (transformers' get_seq_length)
    capacity: int | None  # the largest number of positions a layer can hold; None when unbounded
    memory: int  # bytes
    layers: int
    sliding_layers: int
    offloaded: bool
    quantization_bits: int | None


def cache_facts(cache: Any) -> CacheFacts | None:
    """What the cache looks like now; None for no cache."""
    if cache is None:
        return None
    self_attention = getattr(cache, "self_attention_cache", cache)
    layers = _cache_layers(self_attention)
    every_layer = layers + _cache_layers(getattr(cache, "cross_attention_cache", None))
    limits = [int(layer.get_max_length()) for layer in layers if hasattr(layer, "get_max_length")]
    get_length = getattr(cache, "get_seq_length", None)
    return CacheFacts(
        type=cache_type(cache),
        class_name=type(cache).__name__,
        length=int(get_length()) if callable(get_length) else 0,  # a 0-dim tensor for static caches
        capacity=max(limits) if limits and min(limits) > 0 else None,
        memory=memory_bytes(every_layer),
        layers=len(layers),
        sliding_layers=sum(bool(getattr(layer, "is_sliding", False)) for layer in layers),
        offloaded=bool(getattr(self_attention, "offloading", False)),
        quantization_bits=_quantization_bits(layers),
    )


def _cuda_device(model: Any) -> torch.device | None:
    parameters = getattr(model, "parameters", None)
    if not callable(parameters):
        return None
    first = next(iter(parameters()), None)
    return first.device if first is not None and first.device.type == "cuda" else None


@hookimpl
def corevital_declare_metrics() -> list[MetricSpec]:
    return [
        MetricSpec(
            "corevital.kv_cache.memory",
            "By",
            "histogram",
            "Bytes the KV cache held when generate() returned, by cache type (and declared budget).",
            BYTE_BUCKETS,
        ),
        MetricSpec(
            "corevital.kv_cache.length",
            "{token}",
            "histogram",
            "Positions the KV cache covered when generate() returned, by cache type (and declared budget).",
            TOKEN_BUCKETS,
        ),
        MetricSpec(
            "corevital.device.memory.peak",
            "By",
            "histogram",
            "Peak memory allocated on the model's CUDA device during generate().",
            BYTE_BUCKETS,
        ),
    ]


@hookimpl
def corevital_generation_start(info: GenerationInfo) -> None:
    settings = _options.settings(info.options, COREVITAL_PLUGIN_NAME, KvCacheOptions)
    device = _cuda_device(info.model) if settings.get("peak_memory", True) else None
    if device is not None:
        torch.cuda.reset_peak_memory_stats(device)  # allocator counters: no device sync
        info.state[COREVITAL_PLUGIN_NAME] = (device, torch.cuda.memory_allocated(device))


@hookimpl
def corevital_summarize(info: GenerationInfo, results: GenerationResults) -> None:
    facts = cache_facts(info.cache)
    metric_attributes = {"corevital.kv_cache.type": facts.type if facts else "none"}
    for key, name in CALLER_METRIC_ATTRIBUTES.items():
        if key in info.caller:
            metric_attributes[name] = str(info.caller[key])
    results.set("corevital.kv_cache.type", metric_attributes["corevital.kv_cache.type"])
    if facts is not None:
        results.set("corevital.kv_cache.class", facts.class_name)
        results.set("corevital.kv_cache.length", facts.length)
        results.set("corevital.kv_cache.memory", facts.memory)
        results.set("corevital.kv_cache.layers", facts.layers)
        results.set("corevital.kv_cache.sliding_layers", facts.sliding_layers)
        results.set("corevital.kv_cache.offloaded", facts.offloaded)
        if facts.capacity is not None:
            results.set("corevital.kv_cache.capacity", facts.capacity)
        if facts.quantization_bits is not None:
            results.set("corevital.kv_cache.quantization.bits", facts.quantization_bits)
        results.record_metric("corevital.kv_cache.memory", facts.memory, metric_attributes)
        results.record_metric("corevital.kv_cache.length", facts.length, metric_attributes)
    started = info.state.pop(COREVITAL_PLUGIN_NAME, None)
    if started is not None:
        device, at_start = started
        peak = int(torch.cuda.max_memory_allocated(device))
        results.set("corevital.device.memory.peak", peak)
        results.set("corevital.device.memory.peak_increase", max(peak - at_start, 0))
        results.record_metric("corevital.device.memory.peak", peak, metric_attributes)
