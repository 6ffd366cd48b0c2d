"""Synthetic canary probes: a fixed set of prompts run through a model on a schedule.

Each probe is one greedy generate() inside a ``corevital.probe {name}`` span; the instrumented generation
span is its child. A probe passes when its expected pattern appears in the generated text. The probe span
and the ``corevital.probe.*`` metrics carry pass/fail, latency and the health of the probe's own
generation (risk score, mean entropy, health flags, outcome class — read through the ``probe`` plugin), so
a dashboard shows the model's health even when real traffic is quiet.

Run it with ``corevital-otel probe`` (see docs/probe.md), or inside an application that already
instrumented itself::

    canary = Canary(model, tokenizer)
    canary.run(count=10, interval=60, timeout=900)   # from a background thread; canary.stop.set() ends it

Bounded: at most ``count`` rounds, and nothing runs past ``timeout`` seconds — a generation in flight at the
deadline (or when ``stop`` is set) is ended by a stopping criterion after its current token.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.trace import Status, StatusCode

from .caller_context import context
from .results import row_values
from .telemetry import DURATION_BUCKETS
from .version import __version__

SCOPE = "corevital_otel.probe"
SPAN_NAME = "corevital.probe"
CONTEXT_KEY = "corevital.context.probe"  # on the probe's generation span, through the caller context
OUTCOMES = ("pass", "fail", "error", "timeout", "cancelled")
RISK_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
BIT_BUCKETS = (0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0)

NEEDLE_NAME = "_CANARY_VALUE"
NEEDLE_VALUE = "48213"
# Haystack blocks in the style of the standard library; {i} keeps every block distinct.
_HAYSTACK_BLOCKS = (
    'def _split_path_{i}(path, sep="/"):\n    """Return the head and tail of *path*."""\n'
    "    index = path.rfind(sep) + 1\n    return path[:index], path[index:]\n\n\n",
    "class _Registry{i}:\n    def __init__(self):\n        self._items = {{}}\n\n"
    "    def register(self, name, value):\n        self._items[name] = value\n        return value\n\n\n",
    "def _read_lines_{i}(stream, limit=None):\n    lines = []\n    for line in stream:\n"
    "        if limit is not None and len(lines) >= limit:\n            break\n"
    "        lines.append(line.rstrip())\n    return lines\n\n\n",
)


@dataclass(frozen=True)
class Probe:
    """A prompt and the pattern (a regular expression, searched in the generated text) that passes it."""

    name: str
    prompt: str
    expect: str
    max_new_tokens: int = 16

    def passed(self, text: str) -> bool:
        return re.search(self.expect, text) is not None


def needle_prompt(fits: Callable[[str], bool], depth: float = 0.5, max_blocks: int = 48) -> str:
    """The longest haystack that ``fits`` (at least one block), with ``NEEDLE_NAME = NEEDLE_VALUE`` planted
    at ``depth`` of it, ending in a line that asks for the value back."""

    def build(blocks: int) -> str:
        parts = [_HAYSTACK_BLOCKS[i % len(_HAYSTACK_BLOCKS)].format(i=i) for i in range(blocks)]
        parts.insert(int(round(blocks * depth)), f"{NEEDLE_NAME} = {NEEDLE_VALUE}\n\n\n")
        return "import os\nimport sys\n\n\n" + "".join(parts) + f"assert {NEEDLE_NAME} == "

    blocks = 1
    while blocks < max_blocks and fits(build(blocks + 1)):
        blocks += 1
    return build(blocks)


def default_probes(tokenizer: Any, context_tokens: int, max_new_tokens: int = 16) -> tuple[Probe, ...]:
    """``needle`` (retrieve a planted value from a long passage), ``copy`` (continue a repeated list) and
    ``syntax`` (finish an obvious expression). ``context_tokens`` bounds the needle prompt."""

    def fits(prompt: str) -> bool:
        return len(tokenizer(prompt)["input_ids"]) + max_new_tokens <= context_tokens

    return (
        Probe("needle", needle_prompt(fits), re.escape(NEEDLE_VALUE), max_new_tokens),
        Probe(
            "copy",
            "names = ['alpha', 'beta', 'gamma', 'delta']\nnames = ['alpha', 'beta', 'gamma', '",
            r"^delta'",
            max_new_tokens,
        ),
        Probe("syntax", "def add(a, b):\n    return a +", r"^\s*b\b", max_new_tokens),
    )


def context_limit(model: Any, cap: int = 1024) -> int:
    """Positions the model can attend over (its config's maximum), at most ``cap``."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return min(value, cap)
    return cap


@dataclass
class ProbeResult:
    probe: str
    round: int
    outcome: str  # one of OUTCOMES
    seconds: float
    model: str
    risk: float | None = None
    entropy: float | None = None
    health_flags: tuple[str, ...] = ()
    outcome_class: str | None = None
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.outcome == "pass"


def _first(value: Any) -> Any:
    """Row 0 of a per-row attribute (see ``row_values``); None if absent."""
    rows = row_values(value)
    return rows[0] if rows else None


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _health(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The probe's view of its generation's results (as the plugins wrote them; None when absent)."""
    risk = _first(attributes.get("corevital.risk.score"))
    entropy = _first(attributes.get("corevital.logits.entropy.mean"))
    flags = tuple(
        sorted(
            name.removeprefix("corevital.health.")
            for name, value in attributes.items()
            if name.startswith("corevital.health.") and name.count(".") == 2 and value is True
        )
    )
    return {
        "risk": _finite(risk),
        "entropy": _finite(entropy),
        "health_flags": flags,
        "outcome_class": _first(attributes.get("corevital.outcome.class")),
    }


def _halting_criterion(stop: threading.Event, deadline: float) -> Any:
    """A stopping criterion that ends the generation once ``stop`` is set or ``deadline`` passed."""
    import torch
    from transformers import StoppingCriteria

    class Halt(StoppingCriteria):
        fired = False

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            halted = stop.is_set() or time.monotonic() >= deadline
            self.fired = self.fired or halted
            return torch.full((input_ids.shape[0],), halted, dtype=torch.bool, device=input_ids.device)

    return Halt()


@dataclass
class Canary:
    """Runs probes through ``model``; spans and metrics go to the given providers (default: global)."""

    model: Any
    tokenizer: Any
    probes: Sequence[Probe] | None = None
    tracer_provider: Any = None
    meter_provider: Any = None
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        if self.probes is None:
            self.probes = default_probes(self.tokenizer, context_limit(self.model))
        self._tracer = trace.get_tracer(SCOPE, __version__, tracer_provider=self.tracer_provider)
        meter = metrics.get_meter(SCOPE, __version__, meter_provider=self.meter_provider)
        self._runs = meter.create_counter(
            "corevital.probe.runs", unit="{run}", description="Canary probe runs, by probe and outcome."
        )
        self._duration = meter.create_histogram(
            "corevital.probe.duration",
            unit="s",
            description="Wall-clock duration of each canary probe's generate().",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        self._risk = meter.create_histogram(
            "corevital.probe.risk",
            unit="1",
            description="Risk score of each canary probe's generation.",
            explicit_bucket_boundaries_advisory=list(RISK_BUCKETS),
        )
        self._entropy = meter.create_histogram(
            "corevital.probe.entropy",
            unit="bit",
            description="Mean next-token entropy of each canary probe's generation.",
            explicit_bucket_boundaries_advisory=list(BIT_BUCKETS),
        )

    def run(
        self,
        count: int,
        interval: float,
        timeout: float,
        on_result: Callable[[ProbeResult], None] | None = None,
    ) -> list[ProbeResult]:
        """Up to ``count`` rounds of every probe, ``interval`` seconds apart, within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        results: list[ProbeResult] = []
        for round_number in range(1, count + 1):
            if round_number > 1 and self.stop.wait(max(min(interval, deadline - time.monotonic()), 0.0)):
                break
            for probe in self.probes or ():
                if self.stop.is_set() or time.monotonic() >= deadline:
                    return results
                result = self.run_probe(probe, round_number, deadline)
                results.append(result)
                if on_result is not None:
                    on_result(result)
        return results

    def _model_name(self) -> str:
        from .model_names import default_model_name

        return default_model_name(self.model) or "unknown"

    def _generate(self, probe: Probe, halt: Any) -> str:
        import torch
        from transformers import StoppingCriteriaList

        encoded = self.tokenizer(probe.prompt, return_tensors="pt").to(self.model.device)
        pad = self.tokenizer.pad_token_id
        with torch.no_grad():
            sequences = self.model.generate(
                **encoded,
                max_new_tokens=probe.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.eos_token_id if pad is None else pad,
                stopping_criteria=StoppingCriteriaList([halt]),
            )
        start = (
            1 if getattr(self.model.config, "is_encoder_decoder", False) else encoded["input_ids"].shape[1]
        )
        return str(self.tokenizer.decode(sequences[0, start:].tolist(), skip_special_tokens=True))

    def run_probe(self, probe: Probe, round_number: int, deadline: float) -> ProbeResult:
        from corevital_otel.plugins.probe import listening

        halt = _halting_criterion(self.stop, deadline)
        span_name = f"{SPAN_NAME} {probe.name}"
        with (
            self._tracer.start_as_current_span(
                span_name, record_exception=False, set_status_on_exception=False
            ) as span,
            listening() as slot,
            context(attributes={CONTEXT_KEY: probe.name}),
        ):
            started = time.perf_counter()
            error: Exception | None = None
            try:
                text = self._generate(probe, halt)
            except Exception as exc:  # noqa: BLE001 - a failing model is a failed probe, not a dead canary
                error, text = exc, ""
            seconds = time.perf_counter() - started
            if error is not None:
                outcome = "error"
            elif halt.fired:
                outcome = "cancelled" if self.stop.is_set() else "timeout"
            else:
                outcome = "pass" if probe.passed(text) else "fail"
            result = ProbeResult(
                probe.name,
                round_number,
                outcome,
                seconds,
                slot.get("model_name") or self._model_name(),
                error=None if error is None else f"{type(error).__name__}: {error}"[:300],
                **_health(slot.get("attributes") or {}),
            )
            self._export(span, result, error)
        return result

    def _export(self, span: Any, result: ProbeResult, error: Exception | None) -> None:
        base = {"corevital.probe.name": result.probe, "gen_ai.request.model": result.model}
        attributes: dict[str, Any] = {
            **base,
            "corevital.probe.round": result.round,
            "corevital.probe.outcome": result.outcome,
            "corevital.probe.passed": result.passed,
            "corevital.probe.health_flags": result.health_flags,
        }
        if result.risk is not None:
            attributes["corevital.probe.risk_score"] = result.risk
            self._risk.record(result.risk, base)
        if result.entropy is not None:
            attributes["corevital.probe.entropy.mean"] = result.entropy
            self._entropy.record(result.entropy, base)
        if result.outcome_class is not None:
            attributes["corevital.probe.outcome_class"] = result.outcome_class
        span.set_attributes(attributes)
        if error is not None:
            span.set_attribute("error.type", f"{type(error).__module__}.{type(error).__qualname__}")
            span.set_status(Status(StatusCode.ERROR, result.error or ""))
            span.record_exception(error)
        self._runs.add(1, {**base, "corevital.probe.outcome": result.outcome})
        self._duration.record(result.seconds, base)
