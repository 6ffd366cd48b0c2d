"""The terminal report's pieces, on spans built by hand: no model needed."""

from __future__ import annotations

import io
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from corevital_otel.report import Observation, Progress, Style, render_report, sparkline
from corevital_otel.report.terminal import BARS, MISSING, resample

CORE = {
    "gen_ai.operation.name": "text_completion",
    "gen_ai.usage.input_tokens": 3,
    "gen_ai.response.finish_reasons": ("length",),
    "corevital.request.do_sample": False,
    "corevital.steps.count": 4,
    "corevital.steps.logits.entropy": (1.0, 2.0, None, 7.5),
}
ANALYSIS = {
    "corevital.health.repetition_loop_detected": True,
    "corevital.health.first_step.repetition_loop_detected": 2,
    "corevital.health.nan_detected": False,
    "corevital.health.high_entropy_steps": 1,
    "corevital.health.per_row.repetition_loop_detected": (True,),
    "corevital.health.profile": "gpt2",
    "corevital.risk.score": (0.81,),
    "corevital.risk.level": ("high",),
    "corevital.risk.factors": ("repetition_loop,entropy",),
    "corevital.blame.layers": (2, 0),
    "corevital.blame.severity": (0.6, 0.3),
    "corevital.blame.reasons": ("l2_outlier", "unstable_norm,collapse"),
    "corevital.narrative": ("Risk was high (0.81), driven by a repetition loop.",),
    "corevital.steps.health.repetition": (0.0, 0.0, 1.0, 3.0),
}


def observation(attributes: dict[str, Any], text: str = "a\nb") -> Observation:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    with provider.get_tracer("test").start_as_current_span("text_completion demo", attributes=attributes):
        pass
    return Observation("x = (", text, [1, 2, 3, 4], spans.get_finished_spans()[0], 0.5)


def sections(report: str) -> dict[str, str]:
    """Label -> the section's text (continuation lines joined), from a plain-text report."""
    found: dict[str, str] = {}
    label = ""
    for line in report.splitlines()[1:]:
        head, body = line[2:12].strip(), line[12:]
        label = head or label
        found[label] = (found.get(label, "") + "\n" + body).strip("\n")
    return found


def test_sparkline_uses_a_fixed_scale_and_marks_missing_values() -> None:
    assert sparkline([0.0, 4.0, 8.0, None, float("nan"), 12.0, -1.0], 0.0, 8.0) == (
        BARS[0] + BARS[4] + BARS[-1] + "  " + BARS[-1] + BARS[0]
    )


def test_resample_keeps_a_single_spike() -> None:
    values = [0.0] * 100
    values[37] = 9.0
    points = resample(values, 10)
    assert len(points) == 10 and points.count(9.0) == 1 and max(points) == 9.0
    assert resample([1.0, None], 10) == [1.0, None]


def test_style_is_plain_without_colour() -> None:
    assert Style(False)("risk", "red") == "risk"
    assert Style(True)("risk", "red") == "\033[31mrisk\033[0m"
    assert not Style.for_stream(io.StringIO()).color  # not a terminal


def test_every_section_is_present_and_missing_analysis_shows_a_dash() -> None:
    report = render_report(observation(CORE), "healthy", 1, 3, Style(False), width=90)
    assert report.startswith("━━ 1/3 · healthy · greedy ")
    found = sections(report)
    assert list(found) == [
        "prompt",
        "output",
        "tokens",
        "entropy",
        "flags",
        "risk",
        "blame",
        "narrative",
        "trace",
    ]
    for name in ("flags", "risk", "blame", "narrative"):
        assert found[name] == MISSING, name
    assert found["tokens"].startswith("3 in → 4 out · finish length · 0.50 s")
    assert found["output"].splitlines() == ["│ a", "│ b"]
    assert "max 7.5 at step 3" in found["entropy"]


def test_flags_risk_blame_and_narrative_come_from_the_span() -> None:
    report = render_report(observation({**CORE, **ANALYSIS}), "looping", 2, 3, Style(False), width=90)
    found = sections(report)
    assert found["flags"] == "high_entropy_steps 1 · repetition_loop_detected (from step 2)"
    assert found["risk"] == "0.81 high · factors: repetition_loop, entropy"
    assert found["blame"] == "layer 2 (0.60: l2_outlier) · layer 0 (0.30: unstable_norm, collapse)"
    assert found["narrative"] == "Risk was high (0.81), driven by a repetition loop."


def test_no_flag_fired_reads_none_and_no_blamed_layer_reads_none() -> None:
    quiet = {
        **CORE,
        "corevital.health.repetition_loop_detected": False,
        "corevital.health.high_entropy_steps": 0,
        "corevital.blame.layers": (),
    }
    found = sections(render_report(observation(quiet), "healthy", 1, 1, Style(False)))
    assert found["flags"] == "none"
    assert found["blame"] == "none"


def test_loop_steps_are_red_in_the_sparkline_when_coloured() -> None:
    report = render_report(observation({**CORE, **ANALYSIS}), "looping", 1, 1, Style(True))
    line = next(line for line in report.splitlines() if "entropy" in line)
    assert line.count("\033[31m") == 1  # only step 3 is finite and looping; step 2 is missing
    assert "\033[31m" + BARS[int(7.5 / 8 * len(BARS))] in line


def test_long_outputs_are_cut_with_a_count() -> None:
    text = "\n".join("xyz" for _ in range(11))
    report = render_report(observation(CORE, text), "x", 1, 1, Style(False))
    assert "… 3 more lines" in report


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream_type", [io.StringIO, FakeTerminal])
def test_progress_overwrites_on_a_terminal_and_prints_lines_elsewhere(stream_type: type) -> None:
    stream = stream_type()
    progress = Progress(stream, min_interval=0.0)
    progress.phase("[1/2] loading")
    progress.detail("token 3/8")
    progress.phase("[2/2] x")
    progress.clear()
    if stream_type is FakeTerminal:
        assert "\r[1/2] loading token 3/8" in stream.getvalue() and "\n" not in stream.getvalue()
    else:
        assert stream.getvalue() == "[1/2] loading\n[2/2] x\n"
