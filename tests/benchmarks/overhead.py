"""Overhead of corevital_otel against plain generate() and the output_* approach, side by side.

    .venv/bin/python tests/benchmarks/overhead.py            # the target shapes (minutes on 2 CPU cores)
    .venv/bin/python tests/benchmarks/overhead.py --grid full --repeats 3

For each shape, every variant runs in the same process, interleaved (plain, summary, full, on_risk,
output_*, plain, ...), after one warm-up each; the table reports median seconds per call, the spread
(min-max) and the ratio of medians to plain generate(). Peak memory is measured in a fresh subprocess
per (shape, variant), since a process' peak RSS only grows. Host syncs per step count the .item(),
.cpu(), .tolist(), .numpy() and .tolist() calls made from corevital code during generate().

Writes a Markdown table (and a PNG plot when matplotlib is installed) to --out (default
docs/benchmarks/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("plain", "summary", "full", "on_risk", "output_flags")
TARGETS_TEXT = (
    "full metric set, default mode (full): <= 1.05x plain generate() on gpt2-small p128 n64 b1 (CPU); "
    "<= 1.10x on the smallest shape; well below the output_* approach everywhere; "
    "memory: no growth with generated tokens beyond a few values per step."
)


@dataclass(frozen=True)
class Shape:
    model: str  # "gpt2-small" or "llama-gqa"
    prompt: int
    new_tokens: int
    batch: int

    @property
    def label(self) -> str:
        return f"{self.model} p{self.prompt} n{self.new_tokens} b{self.batch}"


GRIDS = {
    # The targets: GPT-2-small shape at 64 new tokens, batch 1; plus the GQA model.
    "targets": [Shape("gpt2-small", 128, 64, 1), Shape("llama-gqa", 128, 64, 1)],
    "full": [
        Shape(model, prompt, new, batch)
        for model in ("gpt2-small", "llama-gqa")
        for prompt in (128, 1024)
        for new in (64, 512)
        for batch in (1, 8)
    ],
    "smoke": [Shape("tiny", 16, 8, 1)],
    # Memory against generated length: the same shape at 64 and 512 new tokens (use with --memory-only).
    "memory": [Shape("gpt2-small", 128, 64, 1), Shape("gpt2-small", 128, 512, 1)],
}


def build_model(name: str, attn_implementation: str = "sdpa") -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    if name == "gpt2-small":
        config = transformers.GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=2048)
    elif name == "llama-gqa":
        config = transformers.LlamaConfig(
            vocab_size=32000,
            hidden_size=768,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=12,
            num_key_value_heads=4,
            max_position_embeddings=2048,
        )
    elif name == "tiny":
        config = transformers.LlamaConfig(
            vocab_size=256,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    else:
        raise ValueError(name)
    config._attn_implementation = attn_implementation
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def prompt_ids(model: torch.nn.Module, shape: Shape) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(3, model.config.vocab_size, (shape.batch, shape.prompt), generator=generator)


def generate_kwargs(shape: Shape) -> dict[str, Any]:
    # min_new_tokens: every variant generates exactly the same number of tokens.
    return dict(
        max_new_tokens=shape.new_tokens, min_new_tokens=shape.new_tokens, do_sample=False, pad_token_id=0
    )


def output_flags_summary(output: Any) -> dict[str, Any]:
    """What the prior-art design computed after generate(): the same summaries from output_* tensors."""
    entropies = []
    for logits in output.logits:
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        entropies.append(-(log_probs.exp() * log_probs).nan_to_num().sum(-1))
    attention_entropy = []
    for step in output.attentions:
        for layer in step:
            row = layer[:, :, -1, :].float()
            attention_entropy.append(-(row * torch.log(row.clamp_min(1e-12))).sum(-1))
    norms = [torch.stack([h[:, -1, :].norm(dim=-1) for h in step]) for step in output.hidden_states]
    return {
        "entropy": torch.stack(entropies).mean().item(),
        "attention": torch.stack(attention_entropy).mean().item(),
        "norm": torch.stack(norms).mean().item(),
    }


class Variant:
    """Sets up one way of running generate() for a shape; ``call()`` runs it once."""

    def __init__(self, name: str, shape: Shape) -> None:
        self.name = name
        self.shape = shape
        self.model = build_model(shape.model, "eager" if name == "output_flags" else "sdpa")
        self.ids = prompt_ids(self.model, shape)
        self.kwargs = generate_kwargs(shape)
        if name == "output_flags":
            self.kwargs.update(
                return_dict_in_generate=True,
                output_logits=True,
                output_scores=True,
                output_hidden_states=True,
                output_attentions=True,
            )
        self.providers = None

    def enter(self) -> None:
        if self.name in ("summary", "full", "on_risk"):
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import InMemoryMetricReader
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

            import corevital_otel

            if self.providers is None:
                tracer_provider = TracerProvider()
                tracer_provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
                self.providers = (tracer_provider, MeterProvider(metric_readers=[InMemoryMetricReader()]))
            corevital_otel.instrument(
                tracer_provider=self.providers[0], meter_provider=self.providers[1], capture_mode=self.name
            )

    def exit(self) -> None:
        if self.name in ("summary", "full", "on_risk"):
            import corevital_otel

            corevital_otel.uninstrument()
            self.providers[0].force_flush()

    def call(self) -> float:
        self.enter()
        try:
            start = time.perf_counter()
            output = self.model.generate(self.ids, **self.kwargs)
            if self.name == "output_flags":
                output_flags_summary(output)
            return time.perf_counter() - start
        finally:
            self.exit()


def count_host_syncs(shape: Shape) -> float:
    """Host syncs per generated step made by corevital code *while the model decodes* (full mode).

    The one-off transfers after the last step (sequences, series) are not per-step costs and are not
    counted: only calls made while a capture session is active inside the original generate().
    """
    from corevital_otel.capture.active import ACTIVE_CAPTURE

    variant = Variant("full", shape)
    counted = {"n": 0}
    ours = (str(ROOT / "corevital_otel"), str(ROOT / "plugins"))
    originals: dict[str, Callable] = {}

    def counting(name: str) -> Callable:
        original = getattr(torch.Tensor, name)
        originals[name] = original

        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(ours) and ACTIVE_CAPTURE.get() is not None:
                counted["n"] += 1
            return original(self, *args, **kwargs)

        return wrapper

    names = ("item", "cpu", "tolist", "numpy")
    variant.enter()
    try:
        start_generate = variant.model.generate

        def during_generate(*args, **kwargs):
            for name in names:
                setattr(torch.Tensor, name, counting(name))
            try:
                return start_generate(*args, **kwargs)
            finally:
                for name, original in originals.items():
                    setattr(torch.Tensor, name, original)

        during_generate(variant.ids, **variant.kwargs)
    finally:
        variant.exit()
    return counted["n"] / shape.new_tokens


def current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_growth_during(call: Callable[[], Any]) -> float:
    """Peak of the process' current RSS while ``call`` runs, minus the RSS before it (MB), sampled
    every 2 ms by a thread (ru_maxrss would only show the model's construction peak)."""
    before = current_rss_mb()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], current_rss_mb())
            done.wait(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        call()
    finally:
        done.set()
        sampler.join()
    return max(peak[0], current_rss_mb()) - before


def peak_rss_mb(shape: Shape, variant: str) -> float:
    """Peak RSS growth (MB) of one call in a fresh process (after a warm-up call)."""
    code = (
        "import sys, json, torch; torch.set_num_threads(1);"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r}); import overhead as o;"
        f"v = o.Variant({variant!r}, o.Shape(**{json.dumps(asdict(shape))})); v.call();"
        "print(json.dumps(o.peak_growth_during(v.call)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def time_shape(shape: Shape, repeats: int) -> dict[str, list[float]]:
    variants = [Variant(name, shape) for name in VARIANTS]
    for variant in variants:  # warm-up
        variant.call()
    timings: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(repeats):
        for variant in variants:
            timings[variant.name].append(variant.call())
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=sorted(GRIDS), default="targets")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    parser.add_argument("--memory-only", action="store_true", help="only the memory subprocesses, no timing")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"targets: {TARGETS_TEXT}", flush=True)
    rows = []
    for shape in GRIDS[args.grid]:
        print(f"{'measuring' if args.memory_only else 'timing'} {shape.label} ...", flush=True)
        timings = (
            {name: [float("nan")] for name in VARIANTS}
            if args.memory_only
            else time_shape(shape, args.repeats)
        )
        plain = statistics.median(timings["plain"])
        syncs = float("nan") if args.memory_only else count_host_syncs(shape)
        for name in VARIANTS:
            median = statistics.median(timings[name])
            row = {
                "shape": shape.label,
                "variant": name,
                "median_s": median,
                "min_s": min(timings[name]),
                "max_s": max(timings[name]),
                "ratio": median / plain,
                "host_syncs_per_step": syncs if name == "full" else None,
                "peak_rss_mb": None if args.no_memory else peak_rss_mb(shape, name),
            }
            rows.append(row)
            print(
                f"  {name:13s} median {median:7.3f}s  spread {row['min_s']:.3f}-{row['max_s']:.3f}"
                f"  ratio {row['ratio']:.3f}"
                + (f"  rss +{row['peak_rss_mb']:.0f} MB" if row["peak_rss_mb"] else ""),
                flush=True,
            )
    write_report(rows, args)
    return 0


def write_report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    cpu = platform.processor() or platform.machine()
    machine = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, 1 thread"
    lines = [
        f"Grid `{args.grid}`, {args.repeats} interleaved repeats, {machine}.",
        "",
        f"Targets: {TARGETS_TEXT}",
        "",
        "| shape | variant | median s | spread s | ratio to plain | peak RSS growth MB"
        " | corevital host syncs / step |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        rss = "" if row["peak_rss_mb"] is None else f"{row['peak_rss_mb']:.0f}"
        syncs = "" if row["host_syncs_per_step"] is None else f"{row['host_syncs_per_step']:.2f}"
        lines.append(
            f"| {row['shape']} | {row['variant']} | {row['median_s']:.3f}"
            f" | {row['min_s']:.3f}–{row['max_s']:.3f} | {row['ratio']:.3f} | {rss} | {syncs} |"
        )
    (args.out / f"overhead-{args.grid}.md").write_text("\n".join(lines) + "\n")
    (args.out / f"overhead-{args.grid}.json").write_text(json.dumps(rows, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    shapes = list(dict.fromkeys(row["shape"] for row in rows))
    figure, axis = plt.subplots(figsize=(2 + 2.2 * len(shapes), 4))
    width = 0.8 / len(VARIANTS)
    for index, variant in enumerate(VARIANTS):
        ratios = [
            next(r["ratio"] for r in rows if r["shape"] == s and r["variant"] == variant) for s in shapes
        ]
        axis.bar([i + index * width for i in range(len(shapes))], ratios, width, label=variant)
    axis.axhline(1.05, color="grey", linestyle="--", linewidth=1)
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(shapes))], shapes, rotation=15, fontsize=8)
    axis.set_ylabel("time / plain generate()")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(args.out / f"overhead-{args.grid}.png", dpi=120)


if __name__ == "__main__":
    sys.exit(main())
