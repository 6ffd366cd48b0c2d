"""``corevital-otel probe``: a synthetic canary that runs fixed probe prompts through a model on a schedule.

    corevital-otel probe --demo --count 3 --interval 60
    OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 corevital-otel probe --model ./my-model --count 60

Probes: ``needle`` (retrieve a value planted in a long stdlib-like passage), ``copy`` and ``syntax``. Each
round runs every probe once; rounds are ``--interval`` seconds apart; the command ends after ``--count``
rounds or ``--timeout`` seconds (counted from its start, a generation in flight is ended at the deadline),
or on SIGINT/SIGTERM, flushing what it recorded. With ``OTEL_EXPORTER_OTLP_ENDPOINT`` set, probe spans,
their generation spans and the metrics go there; a summary is always printed. Exit status 0 when the run
completed, whatever the probes' results (pass/fail is data); 2 on a usage, model or export setup error.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corevital_otel.canary import ProbeResult

SERVICE_NAME = "corevital-otel-probe"
FLUSH_TIMEOUT_S = 5.0
PROBE_NAMES = ("needle", "copy", "syntax")


def _number(kind: type, minimum: float, inclusive: bool) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a number") from None
        if value < minimum or (value == minimum and not inclusive):
            bound = f"at least {minimum}" if inclusive else f"more than {minimum}"
            raise argparse.ArgumentTypeError(f"{text}: must be {bound}")
        return value

    return parse


def _probe_names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = sorted(set(names) - set(PROBE_NAMES))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(PROBE_NAMES)}")
    return names


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "probe",
        help="run canary probes through a model and export pass/fail, latency and health",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="PATH", help="a local model directory (save_pretrained)")
    source.add_argument("--demo", action="store_true", help="the embedded demo model")
    parser.add_argument(
        "--count", type=_number(int, 1, True), default=1, metavar="N", help="rounds to run (default 1)"
    )
    parser.add_argument(
        "--interval",
        type=_number(float, 0, True),
        default=60.0,
        metavar="S",
        help="seconds between rounds (default 60)",
    )
    parser.add_argument(
        "--timeout",
        type=_number(float, 0, False),
        default=300.0,
        metavar="S",
        help="the whole run's time limit in seconds (default 300)",
    )
    parser.add_argument(
        "--probes", type=_probe_names, default=PROBE_NAMES, metavar="NAMES", help="e.g. needle,syntax"
    )
    parser.set_defaults(run=run)


def _error(message: str) -> int:
    print(f"corevital-otel probe: error: {message}", file=sys.stderr)
    return 2


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM end the run cleanly (after the current token) instead of killing it unflushed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    for number in previous:
        signal.signal(number, lambda *_: stop.set())
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _line(result: ProbeResult) -> str:
    parts = [
        f"round {result.round}",
        f"{result.probe:<7}",
        f"{result.outcome.upper():<9}",
        f"{result.seconds:6.2f} s",
    ]
    if result.risk is not None:
        parts.append(f"risk {result.risk:.2f}")
    if result.entropy is not None:
        parts.append(f"entropy {result.entropy:.2f} bit")
    if result.outcome_class is not None:
        parts.append(f"outcome {result.outcome_class}")
    if result.health_flags:
        parts.append("flags " + ",".join(result.health_flags))
    if result.error:
        parts.append(result.error)
    return "  ".join(parts)


def run(arguments: argparse.Namespace) -> int:
    started = time.monotonic()
    from corevital_otel.report import ExportSetupError, ModelLoadError, Telemetry, load_local_model

    try:
        telemetry = Telemetry.create(SERVICE_NAME)
    except ExportSetupError as error:
        return _error(str(error))
    try:
        if arguments.model:
            model, tokenizer = load_local_model(arguments.model)
        else:
            from corevital_otel.demo_model import DEMO_MODEL_DIR, DEMO_MODEL_NAME

            model, tokenizer = load_local_model(DEMO_MODEL_DIR, display_name=DEMO_MODEL_NAME)
    except ModelLoadError as error:
        telemetry.shutdown(FLUSH_TIMEOUT_S)
        return _error(f"--model {error}" if arguments.model else str(error))

    results = _probe(model, tokenizer, arguments, telemetry, time.monotonic() - started)
    flushed = telemetry.shutdown(FLUSH_TIMEOUT_S)
    passed = sum(result.passed for result in results)
    print(f"{len(results)} probe runs: {passed} passed, {len(results) - passed} did not")
    if telemetry.otlp_traces is not None:
        state = "sent" if flushed else "NOT confirmed (flush timed out: is a receiver listening?)"
        print(f"OTLP export {state}: {telemetry.otlp_traces.where}, service.name={SERVICE_NAME}")
    else:
        print("OTEL_EXPORTER_OTLP_ENDPOINT is not set: nothing left this process.")
    return 0


def _probe(
    model: Any, tokenizer: Any, arguments: argparse.Namespace, telemetry: Any, elapsed: float
) -> list[ProbeResult]:
    """Instrument, run the canary and always uninstrument; the clock already ran ``elapsed`` seconds."""
    import corevital_otel
    from corevital_otel.canary import Canary, context_limit, default_probes
    from corevital_otel.report.generations import quiet_transformers

    if corevital_otel.is_instrumented():  # e.g. under opentelemetry-instrument: use the probe's providers
        corevital_otel.uninstrument()
    corevital_otel.instrument(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider
    )
    corevital_otel.register_tokenizer(model, tokenizer)  # the outcome plugin's text checks use it
    with quiet_transformers():  # sizing the needle prompt tokenizes candidates longer than the model's limit
        probes = [p for p in default_probes(tokenizer, context_limit(model)) if p.name in arguments.probes]
    canary = Canary(
        model,
        tokenizer,
        probes,
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
    )

    def report(result: ProbeResult) -> None:
        print(_line(result), flush=True)
        telemetry.spans.clear()  # the in-memory copy is not read here: keep a long run's memory flat

    from corevital_otel.model_names import default_model_name

    print(f"corevital-otel probe · {default_model_name(model)} · probes {', '.join(arguments.probes)}")
    try:
        with _stop_on_signals(canary.stop), quiet_transformers():
            return canary.run(
                arguments.count, arguments.interval, max(arguments.timeout - elapsed, 0.0), report
            )
    finally:
        corevital_otel.uninstrument()
