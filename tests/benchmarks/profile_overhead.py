"""Where corevital_otel's time goes inside an instrumented generate(): a profile by part.

    taskset -c 1 .venv/bin/python tests/benchmarks/profile_overhead.py --shape llama-56m --rounds 5

Wraps the capture hooks, the block fold, each plugin phase (and each plugin within it) and the
end-of-call emission with wall-clock accumulators, runs plain and instrumented calls alternately (same
process, same weights, 1 thread, pinned core), and prints milliseconds per call and the share of a
plain call for each part. The parts nest (a fold happens inside a hook; plugins inside a phase); the
torch-side cost of having hooks at all (module call dispatch) is not attributed to any part, so the
attributed total is a lower bound of the overhead that tests/benchmarks/overhead.py measures as a ratio.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
import overhead  # noqa: E402 - the benchmark's shapes and variants

ELAPSED: collections.Counter[str] = collections.Counter()


def _timed(owner: Any, name: str, label: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            ELAPSED[label] += time.perf_counter() - start

    setattr(owner, name, wrapper)


def _timed_phases() -> None:
    """Time each plugin phase and each plugin within it (``call_each`` is a generator)."""
    from corevital_otel.plugin_host import PluginHost

    original = PluginHost.call_each

    def call_each(self: Any, phase: str, failures: Any, **arguments: Any) -> Iterator[tuple[str, Any]]:
        results = original(self, phase, failures, **arguments)
        while True:
            start = time.perf_counter()
            try:
                plugin, result = next(results)
            except StopIteration:
                ELAPSED[f"phase {phase}"] += time.perf_counter() - start
                return
            spent = time.perf_counter() - start
            ELAPSED[f"phase {phase}"] += spent
            ELAPSED[f"  plugin {plugin} ({phase})"] += spent
            yield plugin, result

    PluginHost.call_each = call_each


def install() -> None:
    from corevital_otel import export, generation
    from corevital_otel.capture import session, stash

    # A layer's output reaches layer_output from its tapped class, or _after_layer from a forward hook.
    for name in ("_before_forward", "_after_forward", "layer_output", "_after_layer", "observe_attention"):
        _timed(session.CaptureSession, name, f"hook {name}")
    _timed(stash._LayerKeys, "keep_row", "hook keep_row")  # a decoding step's attention, from the observer
    _timed(stash.StepStash, "fold", "fold (attention scoring)")
    _timed(generation.GenerationCall, "_deliver_prompt", "prompt analysis")
    _timed(generation.GenerationCall, "_finish", "after generate(): analysis and emission")
    _timed(export, "write_span", "  emission: span attributes and events")
    _timed(export, "record_metrics", "  emission: metrics")
    _timed_phases()


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (also checked against every command docs/performance.md shows)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama-56m", choices=("gpt2-small", "llama-56m", "tiny"))
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--variant", default="full", choices=("full", "summary"))
    parser.add_argument("--rounds", type=int, default=5)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    install()
    shape = overhead.Shape(args.shape, args.prompt, args.new_tokens, args.batch)
    plain, traced = overhead.Variant("plain", shape), overhead.Variant(args.variant, shape)
    plain.call(), traced.call()
    ELAPSED.clear()
    plain_seconds, traced_seconds = [], []
    for _ in range(args.rounds):
        plain_seconds.append(plain.call()[0])
        traced_seconds.append(traced.call()[0])
    base = statistics.median(plain_seconds)
    print(
        f"{shape.label} {args.variant}: plain median {base:.3f} s, instrumented median "
        f"{statistics.median(traced_seconds):.3f} s over {args.rounds} alternating rounds"
    )
    for label, seconds in sorted(ELAPSED.items(), key=lambda item: -item[1]):
        per_call = seconds / args.rounds
        print(f"  {label:48s} {1000 * per_call:8.1f} ms/call  {100 * per_call / base:5.2f} % of plain")
    return 0


if __name__ == "__main__":
    sys.exit(main())
