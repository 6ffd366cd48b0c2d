"""A readable terminal report of one generation, built only from its exported span.

Sections: prompt, output, tokens, entropy (sparkline), flags, risk, blame, narrative, trace. A section
whose attributes are not on the span (a plugin disabled, a capture kind switched off) shows "—" rather
than a guess; "none" means the plugin looked and found nothing.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

from .generations import Observation
from .terminal import MISSING, Style, plural, resample, sparkline

LABEL_WIDTH = 10
MAX_OUTPUT_LINES = 8
SPARKLINE_WIDTH = 64
ENTROPY_SCALE_BITS = 8.0  # sparkline top unless a step goes higher: keeps prompts comparable
HEALTH = "corevital.health."
HEALTH_DETAIL = ("per_row.", "layers.", "first_step.", "profile")
LOOP_SERIES = "health.repetition"  # nonzero while a repetition loop is under way


def _visible(text: str) -> str:
    """One line: newlines and tabs shown as symbols so the exact prompt is readable."""
    return text.replace("\n", "⏎").replace("\t", "⇥")


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _names(value: object) -> list[str]:
    return [part for part in str(value).split(",") if part] if value else []


class ReportWriter:
    """Lays out labelled sections of at most ``width`` columns."""

    def __init__(self, style: Style, width: int) -> None:
        self.style = style
        self.width = max(width, LABEL_WIDTH + 30)
        self.lines: list[str] = []

    @property
    def body_width(self) -> int:
        return self.width - LABEL_WIDTH - 2

    def section(self, label: str, body: str | Sequence[str]) -> None:
        rows = [body] if isinstance(body, str) else list(body) or [MISSING]
        head = self.style(f"{label:<{LABEL_WIDTH}}", "bold")
        for index, row in enumerate(rows):
            self.lines.append(f"  {head if index == 0 else ' ' * LABEL_WIDTH}{row}")

    def wrapped(self, label: str, text: str | None) -> None:
        self.section(label, textwrap.wrap(text, self.body_width) if text else MISSING)


def _title(observation: Observation, index: int, total: int, label: str, style: Style, width: int) -> str:
    mode = "sampled" if observation.attributes.get("corevital.request.do_sample") else "greedy"
    text = f"━━ {index}/{total} · {label} · {mode} "
    return style(text + "━" * max(0, width - len(text)), "bold", "cyan")


def _output_block(observation: Observation, writer: ReportWriter) -> list[str]:
    lines = observation.text.split("\n")
    gutter = writer.style("│ ", "dim")
    shown = [gutter + _clip(line, writer.body_width - 2) for line in lines[:MAX_OUTPUT_LINES]]
    hidden = len(lines) - MAX_OUTPUT_LINES
    if hidden > 0:
        shown.append(writer.style(f"… {plural(hidden, 'more line')}", "dim"))
    return shown if observation.text else [writer.style("(empty)", "dim")]


def _tokens_line(observation: Observation) -> str:
    attributes = observation.attributes
    parts = [f"{attributes.get('gen_ai.usage.input_tokens', '?')} in → {len(observation.tokens)} out"]
    reasons = attributes.get("gen_ai.response.finish_reasons")
    if reasons:
        parts.append(f"finish {reasons[0]}")
    parts.append(f"{observation.seconds:.2f} s")
    per_token = attributes.get("corevital.time_per_output_token")
    if per_token is not None:
        parts.append(f"{per_token * 1000:.1f} ms/token")
    return " · ".join(parts)


def _loop_steps(observation: Observation, steps: int) -> list[bool]:
    """Per step: whether the health plugin saw a loop under way (all False when not exported)."""
    series = (observation.series(LOOP_SERIES) or [])[:steps]
    return [bool(value) for value in series] + [False] * (steps - len(series))


def _entropy_line(observation: Observation, style: Style) -> list[str]:
    entropy = observation.series("logits.entropy")
    finite = [v for v in entropy or [] if v is not None and math.isfinite(v)]
    if not entropy or not finite:
        return [MISSING]
    high = max(ENTROPY_SCALE_BITS, math.ceil(max(finite)))
    points = resample(entropy, SPARKLINE_WIDTH)
    looping = resample([1.0 if v else 0.0 for v in _loop_steps(observation, len(entropy))], SPARKLINE_WIDTH)
    chars = sparkline(points, 0.0, high)
    marked = zip(chars, looping, strict=True)
    line = "".join(style(char, "red") if loop and char != " " else char for char, loop in marked)
    peak = max(range(len(entropy)), key=lambda i: -math.inf if entropy[i] is None else entropy[i])
    summary = (
        f"mean {sum(finite) / len(finite):.1f} bits · max {entropy[peak]:.1f} at step {peak}"
        f" · scale 0–{high:g} bits"
    )
    legend = (
        " · " + style("red", "red") + style(" = loop under way", "dim")
        if any(looping) and style.color
        else ""
    )
    return [line, style(summary, "dim") + legend]


def _flags_line(observation: Observation, style: Style) -> str:
    attributes = observation.attributes
    flags = {
        name[len(HEALTH) :]: value
        for name, value in attributes.items()
        if name.startswith(HEALTH) and not name[len(HEALTH) :].startswith(HEALTH_DETAIL)
    }
    if not flags:
        return MISSING
    fired = []
    for name, value in sorted(flags.items()):
        if isinstance(value, bool) and value:
            detail = []
            first = attributes.get(f"{HEALTH}first_step.{name}")
            if first is not None:
                detail.append(f"from step {first}")
            layers = attributes.get(f"{HEALTH}layers.{name}")
            if layers:
                detail.append("layers " + ",".join(str(layer) for layer in layers))
            fired.append(style(name, "red") + (f" ({'; '.join(detail)})" if detail else ""))
        elif not isinstance(value, bool) and value:  # a count, e.g. high_entropy_steps
            fired.append(style(f"{name} {value}", "yellow"))
    return " · ".join(fired) if fired else style("none", "green")


def _risk_lines(observation: Observation, style: Style, width: int) -> list[str]:
    score = observation.row("corevital.risk.score")
    if score is None:
        return [MISSING]
    level = observation.row("corevital.risk.level") or ""
    color = {"low": "green", "medium": "yellow", "high": "red"}.get(level, "bold")
    head = f"{score:.2f} {level}".rstrip()
    factors = _names(observation.row("corevital.risk.factors"))
    text = head + (" · factors: " + ", ".join(factors) if factors else " · no factors")
    lines = textwrap.wrap(text, width, subsequent_indent="  ")
    return [style(head, color) + lines[0][len(head) :], *lines[1:]]


def _blame_line(observation: Observation) -> str:
    layers = observation.attributes.get("corevital.blame.layers")
    if layers is None:
        return MISSING
    if not layers:
        return "none"
    severities = observation.attributes.get("corevital.blame.severity") or ()
    reasons = observation.attributes.get("corevital.blame.reasons") or ()
    blamed = []
    for index, layer in enumerate(layers):
        severity = f"{severities[index]:.2f}" if index < len(severities) else "?"
        why = ", ".join(_names(reasons[index])) if index < len(reasons) else ""
        blamed.append(f"layer {layer} ({severity}{': ' + why if why else ''})")
    return " · ".join(blamed)


def render_report(
    observation: Observation, label: str, index: int, total: int, style: Style, width: int = 100
) -> str:
    """The report of one generation as text (ANSI colour only when ``style.color``)."""
    writer = ReportWriter(style, width)
    writer.section("prompt", _clip(_visible(observation.prompt), writer.body_width))
    writer.section("output", _output_block(observation, writer))
    writer.section("tokens", _tokens_line(observation))
    writer.section("entropy", _entropy_line(observation, style))
    writer.section("flags", _flags_line(observation, style))
    writer.section("risk", _risk_lines(observation, style, writer.body_width))
    writer.section("blame", _blame_line(observation))
    writer.wrapped("narrative", observation.row("corevital.narrative"))
    writer.section("trace", style(format(observation.span.context.trace_id, "032x"), "dim"))
    return "\n".join([_title(observation, index, total, label, style, writer.width), *writer.lines])
