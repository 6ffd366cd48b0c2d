"""``corevital-otel demo``: the product's main job in one offline command.

Loads the embedded demo model (or ``--model PATH``), instruments it with real OpenTelemetry SDK providers,
generates from a handful of prompts chosen to show healthy, uncertain and looping generations, and prints
a report per generation read back from its exported span. With ``OTEL_EXPORTER_OTLP_ENDPOINT`` set the
same spans and metrics also go to that OTLP endpoint (``OTEL_EXPORTER_OTLP_PROTOCOL``: http/protobuf or grpc);
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``_METRICS_ENDPOINT`` send one signal only, or each elsewhere.

Exit status: 0; 1 when an OTLP endpoint did not accept the spans or refused the metrics; 2 for a bad
argument (--model, --prompts, --max-new-tokens beyond the model's positions) or OTLP setting.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corevital_otel.report.terminal import plural  # stdlib only: keeps `corevital-otel --help` light

if TYPE_CHECKING:
    from corevital_otel.report import Progress, Style, Telemetry

SERVICE_NAME = "corevital-otel-demo"
DEFAULT_MAX_NEW_TOKENS = 48
FLUSH_TIMEOUT_S = 3.0  # per flush and per OTLP request: an unreachable endpoint costs seconds


@dataclass(frozen=True)
class DemoPrompt:
    label: str
    text: str
    sample: bool = False  # sampled (temperature 1, fixed seed) instead of greedy


# Chosen on the embedded model (see corevital_otel/demo_model/README.md): greedy decoding continues the
# first plausibly at low risk, the sampled one wanders at high entropy, the last two fall into literal
# loops (a repeated line, a repeated token).
DEFAULT_PROMPTS: tuple[DemoPrompt, ...] = (
    DemoPrompt("healthy", "    def __repr__(self):\n        return '<%s %r>' % (self.__class__.__name__, "),
    DemoPrompt("uncertain", "# The ", sample=True),
    DemoPrompt("looping", "import os\nimport sys\n"),
    DemoPrompt("looping", "    return self._"),
)


class PromptFileError(Exception):
    pass


def load_prompts(path: str) -> list[DemoPrompt]:
    """Prompts from a file: JSON (a list of strings or of ``{"prompt", "label", "sample"}`` objects), or
    plain text with one prompt per non-empty line, where ``\\n`` stands for a newline."""
    try:
        content = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise PromptFileError(f"--prompts {path}: {error.strerror or error}") from error
    if path.endswith(".json"):
        try:
            items = json.loads(content)
            if not isinstance(items, list):
                raise ValueError("expected a JSON list of prompts")
            prompts = [_prompt_from_json(item, index) for index, item in enumerate(items, 1)]
        except (ValueError, TypeError, KeyError) as error:
            raise PromptFileError(f"--prompts {path}: {error}") from error
    else:
        lines = [line.rstrip("\r\n") for line in content.splitlines()]
        prompts = [
            DemoPrompt(f"prompt {index}", line.replace("\\n", "\n"))
            for index, line in enumerate((line for line in lines if line.strip()), 1)
        ]
    if not prompts:
        raise PromptFileError(f"--prompts {path}: no prompts in the file")
    return prompts


def _prompt_from_json(item: Any, index: int) -> DemoPrompt:
    if isinstance(item, str):
        return DemoPrompt(f"prompt {index}", item)
    if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
        raise ValueError(f'entry {index}: expected a string or an object with a "prompt" string')
    label = str(item.get("label", f"prompt {index}"))
    return DemoPrompt(label, item["prompt"], bool(item.get("sample", False)))


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "demo",
        help="run the embedded demo model offline and print a report per generation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", metavar="PATH", help="a local model directory instead of the demo model")
    parser.add_argument(
        "--max-new-tokens", type=_positive, default=DEFAULT_MAX_NEW_TOKENS, metavar="N", help="(default 48)"
    )
    parser.add_argument("--prompts", metavar="FILE", help="prompts file (.json, or one prompt per line)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled prompts (default 0)")
    parser.add_argument("--no-color", action="store_true", help="plain text, no ANSI colour")
    parser.set_defaults(run=run)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def _error(message: str) -> int:
    print(f"corevital-otel demo: error: {message}", file=sys.stderr)
    return 2


def _model_summary(model: Any) -> str:
    config = model.config
    params = sum(p.numel() for p in model.parameters())
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", "?")
    return f"{config.model_type}, {params / 1e6:.1f}M parameters, {layers} layers"


def _export_lines(telemetry: Telemetry, flushed: bool) -> tuple[list[str], bool]:
    """What each OTLP endpoint accepted, one line per signal, and whether everything arrived."""
    lines, complete = [], True
    traces, metrics = telemetry.otlp_traces, telemetry.otlp_metrics
    if traces is not None:
        sent, failed = traces.exporter.exported, traces.exporter.failed
        if failed or not flushed:
            complete = False
            lines.append(
                f"OTLP traces to {traces.where}: {plural(sent, 'span')} accepted, {failed} failed"
                + ("" if flushed else ", flush timed out")
                + ". Is a Collector listening there?"
            )
        else:
            lines.append(f"OTLP traces: {plural(sent, 'span')} accepted by {traces.where}.")
    if metrics is not None:
        sent, failed = metrics.exporter.exported, metrics.exporter.failed
        if failed:
            complete = False
            lines.append(
                f"OTLP metrics to {metrics.where}: REFUSED ({failed} of {sent + failed} export requests"
                " failed)."
                " Does this endpoint take OTLP metrics? (Langfuse, for one, takes traces only:"
                " set OTEL_EXPORTER_OTLP_TRACES_ENDPOINT instead of OTEL_EXPORTER_OTLP_ENDPOINT.)"
            )
        elif not sent:
            complete = False
            lines.append(f"OTLP metrics to {metrics.where}: no export request completed in time.")
        else:
            lines.append(f"OTLP metrics: {plural(sent, 'export request')} accepted by {metrics.where}.")
    lines.append(f"service.name={SERVICE_NAME}")
    return lines, complete


def _footer(telemetry: Telemetry, flushed: bool) -> tuple[str, bool]:
    """The closing lines, and whether every configured OTLP endpoint accepted what it was sent."""
    if telemetry.exporting:
        lines, complete = _export_lines(telemetry, flushed)
        return "\n".join(lines), complete
    return "\n".join(
        [
            "Nothing was exported (OTEL_EXPORTER_OTLP_ENDPOINT is not set). To see the same spans and",
            "metrics in Jaeger, Prometheus/Grafana or Langfuse, start the stack from a checkout of this",
            "repository (docs/observability-stack.md; add -f deploy/compose.langfuse.yaml for Langfuse):",
            "  docker compose -f deploy/compose.yaml up -d",
            "and run the demo again with its endpoint:",
            "  OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 corevital-otel demo",
            "then open Jaeger at http://localhost:16686 (service corevital-otel-demo) or Grafana at",
            "http://localhost:3000.",
        ]
    ), True


def run(arguments: argparse.Namespace) -> int:
    from corevital_otel.model_names import default_model_name
    from corevital_otel.report import (
        ExportSetupError,
        ModelLoadError,
        Progress,
        Style,
        Telemetry,
        load_local_model,
    )
    from corevital_otel.report.generations import check_model_directory
    from corevital_otel.report.limits import token_budget_problem

    style = Style.for_stream(sys.stdout, arguments.no_color)
    progress = Progress()
    try:
        if arguments.model:
            check_model_directory(arguments.model)  # before any progress line: a typo is one line
        prompts = load_prompts(arguments.prompts) if arguments.prompts else list(DEFAULT_PROMPTS)
        if arguments.model and not arguments.prompts:  # the labels describe the demo model's behaviour
            prompts = [DemoPrompt(f"prompt {i}", p.text, p.sample) for i, p in enumerate(prompts, 1)]
        telemetry = Telemetry.create(SERVICE_NAME, timeout_s=FLUSH_TIMEOUT_S)
    except (PromptFileError, ExportSetupError) as error:
        return _error(str(error))
    except ModelLoadError as error:
        return _error(f"--model {error}")

    from corevital_otel.demo_model import DEMO_MODEL_DIR, DEMO_MODEL_NAME

    progress.phase("loading the model …")
    try:
        if arguments.model:
            model, tokenizer = load_local_model(arguments.model)
        else:
            model, tokenizer = load_local_model(DEMO_MODEL_DIR, display_name=DEMO_MODEL_NAME)
    except ModelLoadError as error:
        progress.clear()
        telemetry.shutdown(FLUSH_TIMEOUT_S)
        return _error(f"--model {error}" if arguments.model else str(error))
    progress.clear()
    problem = token_budget_problem(model, tokenizer, [p.text for p in prompts], arguments.max_new_tokens)
    if problem:
        telemetry.shutdown(FLUSH_TIMEOUT_S)
        return _error(problem)

    width = min(shutil.get_terminal_size((100, 24)).columns, 120)
    print(
        style(f"corevital-otel demo · {default_model_name(model)} ({_model_summary(model)})", "bold")
        + f" · {plural(len(prompts), 'prompt')} · up to {arguments.max_new_tokens} new tokens"
    )
    try:
        _run_prompts(model, tokenizer, prompts, arguments, telemetry, progress, style, width)
    finally:
        if telemetry.exporting:
            progress.phase("flushing telemetry …")
        flushed = telemetry.shutdown(FLUSH_TIMEOUT_S)
        progress.clear()
    footer, exported = _footer(telemetry, flushed)
    print()
    print(footer)
    return 0 if exported else 1


def _run_prompts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[DemoPrompt],
    arguments: argparse.Namespace,
    telemetry: Telemetry,
    progress: Progress,
    style: Style,
    width: int,
) -> None:
    """Instrument, generate and print a report per prompt; always uninstruments."""
    import torch

    import corevital_otel
    from corevital_otel.report import observe, render_report
    from corevital_otel.report.generations import quiet_transformers

    if corevital_otel.is_instrumented():  # e.g. under opentelemetry-instrument: use this demo's providers
        print("note: re-instrumenting with the demo's own providers", file=sys.stderr)
        corevital_otel.uninstrument()

    def on_step(info: Any, step: int, outputs: Any) -> None:
        progress.detail(f"token {step + 1}/{arguments.max_new_tokens}")

    corevital_otel.instrument(  # full detail: the report draws every step's entropy (default: on_risk)
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        on_step=on_step,
        capture_mode="full",
    )
    corevital_otel.register_tokenizer(model, tokenizer)  # only used if content capture is switched on
    try:
        for index, prompt in enumerate(prompts, 1):
            progress.phase(f"[{index}/{len(prompts)}] {prompt.label}: generating")
            options: dict[str, Any] = {"max_new_tokens": arguments.max_new_tokens, "do_sample": prompt.sample}
            if prompt.sample:
                torch.manual_seed(arguments.seed)
                options.update(temperature=1.0, top_k=0, top_p=1.0)
            with quiet_transformers():
                observation = observe(model, tokenizer, telemetry.spans, prompt.text, **options)
            progress.clear()
            print()
            print(render_report(observation, prompt.label, index, len(prompts), style, width))
    finally:
        progress.clear()
        corevital_otel.uninstrument()
