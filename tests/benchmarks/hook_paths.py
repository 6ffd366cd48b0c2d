"""What the capture's hooks add to each call of a decoding step, timed cold, without a model.

In a running model a layer's weights stream through the CPU's caches between two hook calls, so the
hooks' Python runs cold (about a microsecond a line on the 56M Llama shape). This reproduces that: fake
decoder layers (tapped like real ones, under ``corevital_otel.instrument()``), a registered attention
function that returns at once, a real ``CaptureSession`` on them, and a read of a buffer larger than the
caches before every timed call. Each step runs twice, with the session active and with none (the order
alternates); the median of the paired differences is what the capture adds to that call: the layer tap,
the attention lookup and its observer, and the model's pre- and post-forward hooks.

A model of the cold paths for comparing two versions of the capture code side by side (run each in its
own process, alternating): every cache is evicted before every call, which a real model does not quite
do, so its microseconds are larger than a real call's and are not a share of one (docs/performance.md,
*Thirteenth session*, gives both).

    taskset -c 1 .venv/bin/python tests/benchmarks/hook_paths.py --steps 200
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from collections.abc import Sequence

import torch
from torch import nn

PATHS = ("tap", "attention", "before", "after")
PER_LAYER = ("tap", "attention")  # the others run once per step
_ATTENTION_NAME = "corevital_benchmark_noop"


class BenchmarkAttention(nn.Module):  # found as the layer's self-attention by its class name
    def __init__(self, index: int) -> None:
        super().__init__()
        self.layer_idx = index


class BenchmarkLayer(nn.Module):
    """A decoder layer that returns the output it was given (``self.out``): only the hooks cost."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.self_attn = BenchmarkAttention(index)
        self.out: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor, **kwargs: object) -> torch.Tensor | None:
        return self.out


class BenchmarkModel(nn.Module):
    def __init__(self, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(BenchmarkLayer(index) for index in range(layers))


def _attention(
    module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: object, **_: object
) -> tuple[torch.Tensor, None]:
    return query, None


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="decoding steps (each timed with and without)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--evict-mib", type=int, default=32, help="read before every timed call")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=32000)
    arguments = parser.parse_args(argv)
    if arguments.steps < 8 or arguments.layers < 1:
        parser.error("--steps must be at least 8 and --layers at least 1")
    return arguments


def measure(arguments: argparse.Namespace) -> dict[str, tuple[float, float, float]]:
    """Per path: median µs with the session active, with none, and the median paired difference."""
    from opentelemetry.sdk.trace import TracerProvider
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    import corevital_otel
    from corevital_otel.capture.active import ACTIVE_CAPTURE
    from corevital_otel.capture.layers import ModelLayout
    from corevital_otel.capture.session import CaptureSession, CaptureSwitches

    torch.set_num_threads(1)
    heads, kv_heads, head_dim, width = 8, 4, 64, 512
    model = BenchmarkModel(arguments.layers)
    layers = list(model.layers)
    AttentionInterface.register(_ATTENTION_NAME, _attention)
    corevital_otel.instrument(tracer_provider=TracerProvider())
    try:
        layout = ModelLayout(
            layers=tuple(layers),
            self_attention={id(layer.self_attn): index for index, layer in enumerate(layers)},
            num_heads=heads,
        )
        blocks: list[object] = []
        session = CaptureSession(
            model, layout, CaptureSwitches(prompt=False), blocks.append, False, max_block_steps=32
        )
        session.attach()
        # A cache whose layers append keys, as transformers' DynamicCache does (known by class name).
        appending = type("DynamicLayer", (), {})
        cache = types.SimpleNamespace(layers=[appending() for _ in layers])
        evict = torch.ones(arguments.evict_mib * 2**20 // 4)
        keys = torch.randn(1, kv_heads, arguments.prompt + arguments.steps, head_dim)
        lookup = ALL_ATTENTION_FUNCTIONS.get_interface
        times: dict[tuple[str, bool], list[int]] = {(path, on): [] for path in PATHS for on in (True, False)}
        clock = time.perf_counter_ns

        def step(index: int, active: bool) -> None:
            token = ACTIVE_CAPTURE.set(session if active else None)
            try:
                positions = arguments.prompt if index == 0 else 1
                step_keys = keys[:, :, : arguments.prompt + index]
                ids = torch.randint(0, arguments.vocab, (1, positions))
                evict.sum()
                start = clock()
                session._before_forward(model, (), {"input_ids": ids, "past_key_values": cache})
                times["before", active].append(clock() - start)
                hidden = torch.randn(1, positions, width)
                for layer in layers:
                    query = torch.randn(1, heads, positions, head_dim)
                    layer.out = torch.randn(1, positions, width)
                    evict.sum()
                    start = clock()
                    function = lookup(_ATTENTION_NAME, _attention)
                    function(layer.self_attn, query, step_keys, step_keys, None, dropout=0.0, scaling=0.125)
                    times["attention", active].append(clock() - start)
                    evict.sum()
                    start = clock()
                    layer(hidden, attention_mask=None, position_ids=None, use_cache=True)
                    times["tap", active].append(clock() - start)
                output = types.SimpleNamespace(logits=torch.randn(1, positions, arguments.vocab))
                evict.sum()
                start = clock()
                session._after_forward(model, (), {}, output)
                times["after", active].append(clock() - start)
            finally:
                ACTIVE_CAPTURE.reset(token)

        with torch.no_grad():
            for index in range(arguments.steps):
                for active in (True, False) if index % 2 else (False, True):
                    step(index, active)
        session.finish(None)
        session.detach()
        if session.failures or session.hidden_steps != arguments.steps or not blocks:
            kept = session.failures or session.hidden_steps
            raise RuntimeError(f"the capture did not keep every step: {kept}")
    finally:
        corevital_otel.uninstrument()
    results = {}
    for path in PATHS:
        skip = 3 * (arguments.layers if path in PER_LAYER else 1)  # the prefill and the first steps
        active, inactive = times[path, True][skip:], times[path, False][skip:]
        paired = statistics.median(a - b for a, b in zip(active, inactive, strict=True))
        results[path] = (statistics.median(active) / 1e3, statistics.median(inactive) / 1e3, paired / 1e3)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    results = measure(arguments)
    evicted = f"{arguments.evict_mib} MiB read before every call"
    print(f"{arguments.steps} steps, {arguments.layers} layers, {evicted}")
    print("| path | capture on (µs) | no capture (µs) | added, median of pairs (µs) | per step |")
    print("|---|---|---|---|---|")
    for path, (on, off, added) in results.items():
        per_step = "per layer" if path in PER_LAYER else "once"
        print(f"| {path} | {on:.1f} | {off:.1f} | {added:.1f} | {per_step} |")
    per_step_total = sum(
        added * (arguments.layers if path in PER_LAYER else 1) for path, (_, _, added) in results.items()
    )
    print(f"added per decoding step: {per_step_total:.0f} µs")


if __name__ == "__main__":
    main(sys.argv[1:])
