"""``corevital-otel calibrate``: write a model's baseline profile, or fit its risk score to outcomes.

    corevital-otel calibrate --model ./my-model --prompts prompts.txt --out baseline.json
    corevital-otel calibrate --outcomes outcomes.jsonl --out risk.json      (commands/_outcomes.py)

The generations run through the same instrumentation and plugins as production, so the baseline holds
the distributions the live metrics are compared against. Configure the file with
``COREVITAL_BASELINE=baseline.json`` (or ``plugin_options={"baseline": {"path": ...}}``): each generation
of that model then gets a divergence score and anomalous steps, and its risk components are scaled by
the model's own distribution (docs/risk.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..hookspecs import hookimpl

if TYPE_CHECKING:  # numpy is imported where it is used: `corevital-otel --help` stays light
    import numpy as np

    from ..results import GenerationInfo, StepSeries

EXCLUDED_SERIES = ("risk.running",)  # derived from the baseline itself
LAYER_SERIES = ("hidden_states.layers.l2_norm",)  # per-layer medians: layer blame's reference


class _Collector:
    """A plugin that keeps every real step's value of each per-step scalar series."""

    COREVITAL_PLUGIN_NAME = "calibration"

    def __init__(self) -> None:
        self.values: dict[str, list[np.ndarray]] = defaultdict(list)
        self.layers: dict[str, list[np.ndarray]] = defaultdict(list)
        self.model_name: str | None = None
        self.model_type = ""
        self.family = ""
        self.generations = 0
        self.steps = 0

    @hookimpl
    def corevital_summarize(self, info: GenerationInfo, series: StepSeries) -> None:
        import numpy as np

        self.model_name, self.model_type, self.family = info.model_name, info.model_type, info.family
        self.generations += int(series.mask.shape[1]) if series.mask.ndim == 2 else 0
        self.steps += int(series.mask.sum())
        for name, array in series.arrays.items():
            if name in LAYER_SERIES and array.ndim == 3:
                self.layers[name].append(array[series.mask])  # (real steps, layers)
            if array.ndim != 2 or name in EXCLUDED_SERIES:
                continue
            values = array[series.mask]
            self.values[name].append(values[np.isfinite(values)])

    def layer_medians(self) -> dict[str, list[float]]:
        """Per per-layer series, each layer's median over every real step (one layer count only)."""
        import numpy as np

        medians = {}
        for name, parts in self.layers.items():
            if len({part.shape[1] for part in parts}) == 1:
                with np.errstate(all="ignore"):
                    values = np.nanmedian(np.concatenate(parts), axis=0)
                if np.isfinite(values).all():
                    medians[name] = [float(v) for v in values]
        return medians

    def observed(self) -> dict[str, np.ndarray]:
        import numpy as np

        merged = {name: np.concatenate(parts) for name, parts in self.values.items()}
        # 0/1 indicators (NaN seen, loop under way) have no distribution worth comparing against.
        return {name: values for name, values in merged.items() if not np.isin(values, (0.0, 1.0)).all()}


def calibrate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    do_sample: bool = False,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Generate once per prompt under instrumentation and return the baseline document."""
    import torch
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

    import corevital_otel
    from corevital_otel.plugins._baseline_file import build

    if corevital_otel.is_instrumented():
        raise RuntimeError(
            "calibrate needs a process without corevital instrumentation (it installs its own)"
        )
    collector = _Collector()
    tracer_provider, meter_provider = TracerProvider(), MeterProvider()  # no exporters: nothing leaves
    corevital_otel.instrument(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        plugins=[collector],
        capture_mode="summary",
        capture_logits=True,
        plugin_options={"baseline": {"rolling": False}},
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    try:
        for prompt in prompts:
            inputs = tokenizer(prompt, return_tensors="pt")
            with torch.no_grad():
                model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad)
    finally:
        corevital_otel.uninstrument()
        meter_provider.shutdown()
        tracer_provider.shutdown()
    return build(
        collector.observed(),
        model=model_name or collector.model_name or "",
        model_type=collector.model_type,
        family=collector.family,
        generation={
            "prompts": len(prompts),
            "generations": collector.generations,
            "steps": collector.steps,
            "max_new_tokens": max_new_tokens,
            "do_sample": do_sample,
        },
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        layer_medians=collector.layer_medians(),
    )


def read_prompts(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run(arguments: argparse.Namespace) -> int:
    if arguments.outcomes is not None:
        from . import _outcomes

        return _outcomes.run(arguments)
    if arguments.model is None or arguments.prompts is None:
        print("calibrate: --model and --prompts are needed (or --outcomes)", file=sys.stderr)
        return 2
    try:
        prompts = read_prompts(arguments.prompts)
    except OSError as error:
        print(f"calibrate: cannot read prompts: {error}", file=sys.stderr)
        return 2
    if not prompts:
        print(f"calibrate: {arguments.prompts} holds no prompt (one per line)", file=sys.stderr)
        return 2
    if arguments.max_new_tokens < 1:
        print("calibrate: --max-new-tokens must be at least 1", file=sys.stderr)
        return 2
    import torch

    from ..report import ModelLoadError, load_local_model
    from ..report.limits import token_budget_problem

    torch.manual_seed(arguments.seed)
    try:
        model, tokenizer = load_local_model(arguments.model)  # never the hub: a typo fails at once
    except ModelLoadError as error:
        print(f"calibrate: error: --model {error}", file=sys.stderr)
        return 2
    problem = token_budget_problem(model, tokenizer, prompts, arguments.max_new_tokens)
    if problem:
        print(f"calibrate: error: {problem}", file=sys.stderr)
        return 2
    document = calibrate(
        model, tokenizer, prompts, arguments.max_new_tokens, arguments.do_sample, arguments.model_name
    )
    arguments.out.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    generation = document["generation"]
    print(
        f"wrote {arguments.out}: model {document['model']!r}, {generation['prompts']} prompts, "
        f"{generation['steps']} steps, {len(document['metrics'])} metrics"
    )
    return 0


def register(subcommands: Any) -> None:
    parser = subcommands.add_parser(
        "calibrate",
        help="write a model's baseline profile from a prompt file",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--model", help="a local from_pretrained directory (model + tokenizer)")
    parser.add_argument("--prompts", type=Path, help="text file, one prompt per line")
    parser.add_argument("--out", required=True, type=Path, help="where to write the baseline (or risk) JSON")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per prompt (32)")
    parser.add_argument(
        "--model-name",
        help="the model name the baseline applies to, as spans report it (default: the name spans give "
        "the model, the --model directory's last component)",
    )
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--seed", type=int, default=0, help="torch seed, for --do-sample (0)")
    parser.add_argument(
        "--outcomes", type=Path, help="JSONL of labelled generations: fit the risk score to them instead"
    )
    parser.add_argument("--spans", type=Path, help="OTLP JSON lines resolving the outcomes' trace ids")
    parser.add_argument("--failure", default="incorrect", help="the label the risk predicts (incorrect)")
    parser.add_argument("--baseline", type=Path, help="the baseline the outcomes' features were scaled by")
    parser.set_defaults(run=run)
