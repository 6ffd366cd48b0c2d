"""Overhead of corevital_otel against plain generate() and the output_* approach, side by side.

    taskset -c 1 .venv/bin/python tests/benchmarks/overhead.py              # the target shapes
    taskset -c 1 .venv/bin/python tests/benchmarks/overhead.py --grid long  # 512/2,000 tokens, long prompt
    .venv/bin/python tests/benchmarks/overhead.py --device cuda             # on a GPU, CUDA-event timing

Method: one process per grid, the same random weights for every variant, 1 torch thread, the process
pinned to one core (``--core``, default the last one; ``taskset`` does the same from outside), greedy
with ``min_new_tokens = max_new_tokens`` so every call generates the same tokens. Each round runs every
variant once, after one warm-up call each, in balanced orders (a Williams design: over every 2n rounds
for n variants, n for an even n, each variant runs equally often in each position and after each other
variant; until the tenth session the order was rotated by one, which gave every variant the same
predecessor every round); ``instrument()``/``uninstrument()`` stay outside the timed region. Every
variant runs the same model object: separate copies of the weights sit in different pages and ran up to
4 % apart as plain generate() on this kind of machine, a bias as large as what is measured.
``output_flags`` switches that model to eager attention for its calls (outside the timed region), except
on compiled shapes, where it keeps an eager copy of its own (switching would recompile). The forward hooks
transformers puts on every decoder layer and attention module the first time ``output_hidden_states`` or
``output_attentions`` is asked for (and keeps) are on the shared model during ``output_flags``' calls only:
its users pay them on every call, nobody else ever does. (Until the twelfth session they stayed on after
the warm-up: every variant ran with them, plain generate() included, and corevital hooked the layers it
would otherwise tap.) No other variant may leave a forward hook on the shared model. ``placebo`` is
plain generate() again: its ratio, ideally 1.000, is the noise floor of the run.
The table reports, per variant, the median over rounds of the per-round ratio to plain
generate(), a bootstrap 95 % interval of that median (how far this many noisy rounds pin it down), its
spread (min-max and interquartile range), the median seconds per call, and how noisy the run was (the
spread of plain generate() itself). Host syncs per step count the ``.item()``,
``.cpu()``, ``.tolist()`` and ``.numpy()`` calls made from corevital code while the model decodes; on CUDA
also every synchronisation ``torch.cuda.set_sync_debug_mode`` reports, ours minus plain's.

Writes a Markdown table and JSON to --out (default docs/benchmarks/). Each row records ``code``, a digest
of the measured code: ``pool_runs.py`` pools the rounds of runs of one code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("plain", "summary", "full", "output_flags", "placebo")
TRACED = ("summary", "full", "on_risk")
TARGETS_TEXT = (
    "full <= 1.05x plain generate() (aim 1.03x) on gpt2-small p128 n64 b1 and b4 and on llama-56m "
    "p128 n64 b1; "
    "summary <= 1.03x; both at or below output_flags on every shape; the same at 512 and 2,000 new "
    "tokens; <= 1.10x with a 1,024-token prompt (prompt analysis included); 0 host syncs per step."
)


@dataclass(frozen=True)
class Shape:
    model: str  # "gpt2-small", "llama-56m" or "tiny"
    prompt: int
    new_tokens: int
    batch: int
    compiled: bool = False  # static cache and a torch.compile'd forward

    @property
    def label(self) -> str:
        extra = " static+compile" if self.compiled else ""
        return f"{self.model} p{self.prompt} n{self.new_tokens} b{self.batch}{extra}"


GRIDS = {
    "targets": [
        Shape("gpt2-small", 128, 64, 1),
        Shape("gpt2-small", 128, 64, 4),
        Shape("llama-56m", 128, 64, 1),
    ],
    "llama": [Shape("llama-56m", 128, 64, 1)],  # the targets' slowest-to-resolve shape alone, for many rounds
    "long": [
        Shape("llama-56m", 128, 512, 1),
        Shape("llama-56m", 1024, 64, 1),
        Shape("gpt2-small", 1024, 64, 1),
    ],
    "long-prompt": [Shape("llama-56m", 1024, 64, 1), Shape("gpt2-small", 1024, 64, 1)],
    "long-generation": [Shape("llama-56m", 128, 512, 1)],
    "longest": [Shape("llama-56m", 128, 2000, 1)],
    "compile": [Shape("llama-56m", 128, 64, 1, compiled=True)],
    "smoke": [Shape("tiny", 16, 8, 1)],
    # Memory against generated length (use with --memory-only).
    "memory": [Shape("gpt2-small", 128, 64, 1), Shape("gpt2-small", 128, 512, 1)],
}


def build_model(name: str, attn_implementation: str = "sdpa", device: str = "cpu") -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    if name == "gpt2-small":
        config = transformers.GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=2048)
    elif name == "llama-56m":
        config = transformers.LlamaConfig(
            vocab_size=32000,
            hidden_size=512,
            intermediate_size=1376,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=4,
            max_position_embeddings=4096,
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
    model = transformers.AutoModelForCausalLM.from_config(config).eval().to(device)
    # The shapes come from configs: no generation_config max_length to warn about.
    model.generation_config.max_length = None
    return model


def forward_hooks(model: torch.nn.Module) -> dict[tuple[torch.nn.Module, int], Callable[..., Any]]:
    """Every forward hook on ``model`` and its modules, by (module, handle id)."""
    return {(module, key): hook for module in model.modules() for key, hook in module._forward_hooks.items()}


def prompt_ids(model: torch.nn.Module, shape: Shape) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, model.config.vocab_size, (shape.batch, shape.prompt), generator=generator)
    return ids.to(model.device)


def generate_kwargs(shape: Shape) -> dict[str, Any]:
    # min_new_tokens: every variant generates exactly the same number of tokens.
    kwargs: dict[str, Any] = dict(
        max_new_tokens=shape.new_tokens, min_new_tokens=shape.new_tokens, do_sample=False, pad_token_id=0
    )
    if shape.compiled:
        kwargs["cache_implementation"] = "static"
    return kwargs


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
    """Sets up one way of running generate() for a shape; ``call()`` runs it once and times it."""

    def __init__(
        self, name: str, shape: Shape, device: str = "cpu", model: torch.nn.Module | None = None
    ) -> None:
        """``model``: an sdpa model shared with the other variants (built here when None)."""
        self.name = name
        self.shape = shape
        self.device = device
        self.shares_model = model is not None
        # output_flags needs eager attention: a shared model is switched to it for this variant's calls.
        self.switches_attention = self.shares_model and name == "output_flags"
        if model is None:
            model = build_model(shape.model, "eager" if name == "output_flags" else "sdpa", device)
            if shape.compiled:
                model.forward = torch.compile(model.forward)
        self.model = model
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
        self.providers: tuple[Any, Any] | None = None
        self.last_output: Any = None
        self.hooks_before: dict[tuple[torch.nn.Module, int], Callable[..., Any]] = {}
        # output_flags on the shared model: transformers' output-recording hooks, kept between its calls.
        self.recording_hooks: dict[tuple[torch.nn.Module, int], Callable[..., Any]] = {}

    def enter(self) -> None:
        if self.switches_attention:
            self.model.set_attn_implementation("eager")
        if self.shares_model:
            self.hooks_before = forward_hooks(self.model)
            for (module, key), hook in self.recording_hooks.items():
                module._forward_hooks[key] = hook
        if self.name in TRACED:
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
        if self.switches_attention:
            self.model.set_attn_implementation("sdpa")
        if self.name in TRACED:
            import corevital_otel

            corevital_otel.uninstrument()
            assert self.providers is not None
            self.providers[0].force_flush()
        if self.shares_model:
            self._take_back_hooks()

    def _take_back_hooks(self) -> None:
        """Off the shared model with the forward hooks this variant's call left: output_flags keeps
        transformers' (installed once, they would slow every other variant's calls and stop corevital from
        tapping the layers); any other variant leaving one is a fault of the benchmark."""
        hooks = forward_hooks(self.model)
        left = {place: hook for place, hook in hooks.items() if place not in self.hooks_before}
        if left and self.name != "output_flags":
            raise RuntimeError(f"{self.name} left {len(left)} forward hooks on the shared model")
        self.recording_hooks = left
        for module, key in left:
            del module._forward_hooks[key]

    def _run(self) -> Any:
        output = self.model.generate(self.ids, **self.kwargs)
        if self.name == "output_flags":
            output_flags_summary(output)
        return output

    def call(self) -> tuple[float, float]:
        """Seconds of one generate() call: (wall or CUDA-event time, CPU time of this process)."""
        self.enter()
        try:
            cpu_start = time.process_time()
            if self.device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                start.record()
                self.last_output = self._run()
                end.record()
                torch.cuda.synchronize()
                return start.elapsed_time(end) / 1000.0, time.process_time() - cpu_start
            start_time = time.perf_counter()
            self.last_output = self._run()
            return time.perf_counter() - start_time, time.process_time() - cpu_start
        finally:
            self.exit()


def count_host_syncs(shape: Shape, device: str = "cpu") -> float:
    """Host syncs per generated step made by corevital code *while the model decodes* (full mode).

    The one-off transfers after the last step (sequences, series) are not per-step costs and are not
    counted: only calls made while a capture session is active inside the original generate().
    """
    from corevital_otel.capture.active import ACTIVE_CAPTURE

    variant = Variant("full", shape, device)
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
        for name in names:
            setattr(torch.Tensor, name, counting(name))
        try:
            variant.model.generate(variant.ids, **variant.kwargs)
        finally:
            for name, original in originals.items():
                setattr(torch.Tensor, name, original)
    finally:
        variant.exit()
    return counted["n"] / shape.new_tokens


def cuda_syncs_per_step(shape: Shape) -> float:
    """Synchronisations torch reports (``set_sync_debug_mode``) per step: full mode minus plain."""

    def syncs(name: str) -> int:
        variant = Variant(name, shape, "cuda")
        variant.call()  # warm-up
        variant.enter()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    variant.model.generate(variant.ids, **variant.kwargs)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
        finally:
            variant.exit()
        return sum("synchroniz" in str(warning.message) for warning in caught)

    return (syncs("full") - syncs("plain")) / shape.new_tokens


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


def balanced_orders(count: int) -> list[list[int]]:
    """Orders of ``count`` items (a Williams design) in which every item takes every position equally often
    and follows every other item equally often: once each over ``count`` orders for an even count, twice
    over ``2 * count`` for an odd one. A plain rotation gives every item the same predecessor each round,
    so whatever a call leaves behind (freed memory, garbage) would always land on the same variant."""
    first, low, high = [0], 1, count - 1
    while len(first) < count:  # 0, 1, n-1, 2, n-2, ...: every difference between neighbours once
        first.append(low)
        low += 1
        if len(first) < count:
            first.append(high)
            high -= 1
    orders = [[(item + shift) % count for item in first] for shift in range(count)]
    if count % 2:  # an odd count needs the mirrored orders too for every pair of neighbours
        orders += [order[::-1] for order in orders]
    return orders


def round_order(items: list[Any], round_index: int) -> list[Any]:
    """The order the variants run in during round ``round_index`` (see :func:`balanced_orders`)."""
    orders = balanced_orders(len(items))
    return [items[index] for index in orders[round_index % len(orders)]]


def time_shape(
    shape: Shape, rounds: int, variants: tuple[str, ...], device: str
) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds per call, per variant, one entry per round (interleaved, balanced); every
    variant on one shared model (output_flags of a compiled shape on its own eager copy)."""
    shared = Variant("plain", shape, device).model
    runners = [
        Variant(name, shape, device, None if shape.compiled and name == "output_flags" else shared)
        for name in variants
    ]
    for runner in runners:  # warm-up (and compilation, for compiled shapes)
        runner.call()
    if shape.compiled:  # instrumented generation must return the same tokens on the compiled path
        plain = next(r for r in runners if r.name == "plain").last_output
        for runner in runners:
            if runner.name in TRACED:
                assert torch.equal(runner.last_output, plain), f"{runner.name} changed the tokens"
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for round_index in range(rounds):
        for runner in round_order(runners, round_index):
            timings[runner.name].append(runner.call())
    return timings


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 4:
        return min(values), max(values)
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def bootstrap_interval(
    resample: Callable[[random.Random], list[float]], confidence: float = 0.95, resamples: int = 4000
) -> tuple[float, float]:
    """A bootstrap percentile interval of a median: the medians of ``resamples`` draws of ``resample``
    (a fixed seed, so a table is reproducible from its JSON)."""
    generator = random.Random(0)
    medians = sorted(statistics.median(resample(generator)) for _ in range(resamples))
    tail = (1.0 - confidence) / 2
    return medians[int(tail * (resamples - 1))], medians[int(round((1.0 - tail) * (resamples - 1)))]


def median_interval(
    values: list[float], confidence: float = 0.95, resamples: int = 4000
) -> tuple[float, float]:
    """A bootstrap percentile interval of the median of ``values`` (rounds resampled with replacement):
    how far the median of this many noisy rounds can be trusted."""
    def resample(generator: random.Random) -> list[float]:
        return generator.choices(values, k=len(values))

    return bootstrap_interval(resample, confidence, resamples)


# What a run measured: the code, and this file, which decides how each variant runs (the twelfth session
# changed what output_flags leaves on the shared model: runs on either side of that must not pool).
MEASURED = ("corevital_otel", "plugins", "tests/benchmarks/overhead.py")


def code_digest(root: Path = ROOT) -> str:
    """A short digest of the measured code (every file under ``corevital_otel/`` and ``plugins/``) and of
    the benchmark itself: runs with the same digest measured the same code the same way, so their rounds
    may be pooled (``pool_runs.py``)."""
    digest = hashlib.sha256()
    for part in MEASURED:
        top = root / part
        for path in [top] if top.is_file() else sorted(top.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def summarize(shape: Shape, timings: dict[str, list[tuple[float, float]]]) -> list[dict[str, Any]]:
    plain = [wall for wall, _ in timings["plain"]]
    plain_cpu = [cpu for _, cpu in timings["plain"]]
    noise = (max(plain) - min(plain)) / statistics.median(plain)
    rows = []
    for name, measured in timings.items():
        seconds = [wall for wall, _ in measured]
        ratios = [value / base for value, base in zip(seconds, plain, strict=True)]
        cpu_ratios = [cpu / base for (_, cpu), base in zip(measured, plain_cpu, strict=True)]
        low, high = quartiles(ratios)
        ci_low, ci_high = median_interval(ratios)
        cpu_low, cpu_high = quartiles(cpu_ratios)
        rows.append(
            {
                "shape": shape.label,
                "variant": name,
                "median_s": statistics.median(seconds),
                "ratio": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "ratio_q1": low,
                "ratio_q3": high,
                "ratio_ci95_low": ci_low,
                "ratio_ci95_high": ci_high,
                # CPU time of the process: what the call cost, without the time another tenant of a
                # shared machine held the core.
                "cpu_ratio": statistics.median(cpu_ratios),
                "cpu_ratio_q1": cpu_low,
                "cpu_ratio_q3": cpu_high,
                "plain_spread": noise,
                # Noise here only ever slows a call down: the fastest of the rounds is the least
                # disturbed, so the ratio of the fastest calls is a second, noise-resistant estimate.
                "best_ratio": min(seconds) / min(plain),
                "rounds": len(seconds),
                "round_ratios": ratios,
                "seconds": seconds,
            }
        )
    return rows


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (also checked against every command docs/performance.md shows)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=sorted(GRIDS), default="targets")
    parser.add_argument("--rounds", "--repeats", type=int, default=11, dest="rounds")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated; plain is always run")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--core", type=int, default=None, help="pin to this CPU core (default: the last)")
    parser.add_argument(
        "--memory", action="store_true", help="also measure peak RSS per variant (subprocesses)"
    )
    parser.add_argument("--memory-only", action="store_true", help="only the memory subprocesses, no timing")
    parser.add_argument("--no-memory", action="store_true", help=argparse.SUPPRESS)  # the default now
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    variants = tuple(dict.fromkeys(["plain", *args.variants.split(",")]))
    torch.set_num_threads(1)
    if args.device == "cpu" and hasattr(os, "sched_setaffinity"):
        core = args.core if args.core is not None else max(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
    print(f"targets: {TARGETS_TEXT}", flush=True)
    rows: list[dict[str, Any]] = []
    code = code_digest()
    for shape in GRIDS[args.grid]:
        print(f"{'measuring' if args.memory_only else 'timing'} {shape.label} ...", flush=True)
        if args.memory_only:
            shape_rows = [{"shape": shape.label, "variant": name} for name in variants]
        else:
            shape_rows = summarize(shape, time_shape(shape, args.rounds, variants, args.device))
            syncs = count_host_syncs(shape, args.device)
            cuda_syncs = cuda_syncs_per_step(shape) if args.device == "cuda" else None
            for row in shape_rows:
                row["host_syncs_per_step"] = syncs if row["variant"] == "full" else None
                row["cuda_syncs_per_step"] = cuda_syncs if row["variant"] == "full" else None
        for row in shape_rows:
            row["code"] = code
            if args.memory or args.memory_only:
                row["peak_rss_mb"] = peak_rss_mb(shape, row["variant"])
            print("  " + _line(row), flush=True)
        rows.extend(shape_rows)
    write_report(rows, args)
    return 0


def _line(row: dict[str, Any]) -> str:
    parts = [f"{row['variant']:13s}"]
    if "ratio" in row:
        parts.append(
            f"ratio {row['ratio']:.3f} (95% CI {row['ratio_ci95_low']:.3f}-{row['ratio_ci95_high']:.3f},"
            f" IQR {row['ratio_q1']:.3f}-{row['ratio_q3']:.3f},"
            f" min-max {row['ratio_min']:.3f}-{row['ratio_max']:.3f})  median {row['median_s']:.3f}s"
            f"  best-of ratio {row['best_ratio']:.3f}  CPU-time ratio {row['cpu_ratio']:.3f}"
            f" (IQR {row['cpu_ratio_q1']:.3f}-{row['cpu_ratio_q3']:.3f})"
        )
    if row.get("peak_rss_mb") is not None:
        parts.append(f"rss +{row['peak_rss_mb']:.0f} MB")
    return "  ".join(parts)


def write_report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    if args.device == "cuda":
        machine = f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA-event timing"
    else:
        cpu = platform.processor() or platform.machine()
        machine = f"{cpu}, {os.cpu_count()} cores, pinned to one, torch {torch.__version__}, 1 thread"
    code = rows[0].get("code", "") if rows else ""
    lines = [
        f"Grid `{args.grid}`, {args.rounds} interleaved balanced rounds, {machine}; code `{code}`.",
        "",
        f"Targets: {TARGETS_TEXT}",
        "",
        "| shape | variant | ratio to plain (median of rounds) | 95 % CI of the median (bootstrap) | IQR"
        " | min–max | ratio of fastest calls"
        " | CPU-time ratio (IQR) | median s | plain's own spread | peak RSS growth MB"
        " | corevital host syncs / step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        rss = "" if row.get("peak_rss_mb") is None else f"{row['peak_rss_mb']:.0f}"
        syncs = "" if row.get("host_syncs_per_step") is None else f"{row['host_syncs_per_step']:.2f}"
        if row.get("cuda_syncs_per_step") is not None:
            syncs += f" (CUDA: {row['cuda_syncs_per_step']:.2f})"
        if "ratio" in row:
            timing = (
                f"{row['ratio']:.3f} | {row['ratio_ci95_low']:.3f}–{row['ratio_ci95_high']:.3f}"
                f" | {row['ratio_q1']:.3f}–{row['ratio_q3']:.3f}"
                f" | {row['ratio_min']:.3f}–{row['ratio_max']:.3f} | {row['best_ratio']:.3f}"
                f" | {row['cpu_ratio']:.3f} ({row['cpu_ratio_q1']:.3f}–{row['cpu_ratio_q3']:.3f})"
                f" | {row['median_s']:.3f} | {100 * row['plain_spread']:.0f} %"
            )
        else:
            timing = " | | | | | | | "
        lines.append(f"| {row['shape']} | {row['variant']} | {timing} | {rss} | {syncs} |")
    suffix = "" if args.device == "cpu" else f"-{args.device}"
    (args.out / f"overhead-{args.grid}{suffix}.md").write_text("\n".join(lines) + "\n")
    (args.out / f"overhead-{args.grid}{suffix}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    sys.exit(main())
