"""The canary: probes in process (bounds, outcomes, health) and ``corevital-otel probe`` end to end."""

from __future__ import annotations

import functools
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from corevital_otel import cli
from corevital_otel.canary import NEEDLE_NAME, NEEDLE_VALUE, Canary, Probe, needle_prompt
from tests.core.helpers import metric_points, subprocess_env
from tests.support.otlp_receiver import attributes
from tests.support.tiny_models import build_model

from .helpers import word_tokenizer

PROBE_NAMES = ("needle", "copy", "syntax")
QUICK = Probe("quick", "w30 w31 w32", r"", max_new_tokens=3)  # the empty pattern always matches
NEVER = Probe("never", "w30 w31 w32", r"no such text", max_new_tokens=3)
LONG = Probe("long", "w30", r"", max_new_tokens=240)


@pytest.fixture(scope="module")
def gpt2():
    return build_model("gpt2")


@pytest.fixture
def slow_gpt2(gpt2, monkeypatch):
    """The tiny model at a few milliseconds a forward pass, for this test only: the 240-token probe is
    still generating when the deadlines below pass, however fast the machine (unslowed, it finished in
    under 0.2 s on a quiet one)."""
    forward = gpt2.forward

    @functools.wraps(forward)
    def slowed(*args, **kwargs):
        time.sleep(0.005)
        return forward(*args, **kwargs)

    monkeypatch.setitem(gpt2.__dict__, "forward", slowed)
    return gpt2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, gpt2) -> Path:
    """A tiny model and an offline tokenizer saved the way users save theirs."""
    directory = tmp_path_factory.mktemp("tiny-gpt2")
    gpt2.save_pretrained(directory)
    word_tokenizer().save_pretrained(directory)
    return directory


def _canary(telemetry, model, probes) -> Canary:
    return Canary(
        model,
        word_tokenizer(),
        probes,
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
    )


def test_pass_fail_health_and_trace(instrumented, gpt2):
    telemetry = instrumented()
    results = _canary(telemetry, gpt2, [QUICK, NEVER]).run(count=1, interval=0, timeout=60)
    assert [(r.probe, r.outcome, r.round) for r in results] == [("quick", "pass", 1), ("never", "fail", 1)]
    for result in results:  # the health of the probe's own generation, through the probe plugin
        assert 0.0 <= result.risk <= 1.0 and result.entropy > 0 and result.outcome_class is not None
    spans = {span.name: span for span in telemetry.finished()}
    probe_span = spans["corevital.probe never"]
    assert probe_span.attributes["corevital.probe.passed"] is False
    assert probe_span.attributes["corevital.probe.outcome"] == "fail"
    assert probe_span.attributes["corevital.probe.risk_score"] == results[1].risk
    [generation] = [s for s in telemetry.generation_spans() if s.parent.span_id == probe_span.context.span_id]
    assert generation.attributes["corevital.context.probe"] == "never"
    runs = {
        p.attributes["corevital.probe.outcome"]: p.value
        for p in metric_points(telemetry, "corevital.probe.runs")
    }
    assert runs == {"pass": 1, "fail": 1}
    [duration] = [
        p
        for p in metric_points(telemetry, "corevital.probe.duration")
        if p.attributes["corevital.probe.name"] == "quick"
    ]
    assert duration.count == 1 and duration.sum == pytest.approx(results[0].seconds)


def test_uninstrumented_probes_still_pass_or_fail(telemetry, gpt2):
    results = _canary(telemetry, gpt2, [QUICK, NEVER]).run(count=1, interval=0, timeout=60)
    assert [(r.outcome, r.risk, r.entropy) for r in results] == [("pass", None, None), ("fail", None, None)]


def test_the_deadline_ends_a_generation_in_flight(instrumented, slow_gpt2):
    telemetry = instrumented()
    started = time.monotonic()
    results = _canary(telemetry, slow_gpt2, [LONG, QUICK]).run(count=5, interval=0, timeout=0.2)
    assert time.monotonic() - started < 2.0
    assert [r.outcome for r in results] == ["timeout"]  # and nothing started after the deadline


def test_stop_cancels_and_ends_the_run(instrumented, slow_gpt2):
    telemetry = instrumented()
    canary = _canary(telemetry, slow_gpt2, [LONG, QUICK])
    threading.Timer(0.1, canary.stop.set).start()
    results = canary.run(count=3, interval=0, timeout=60)
    assert [r.outcome for r in results] == ["cancelled"]
    runs = metric_points(telemetry, "corevital.probe.runs")
    assert [p.attributes["corevital.probe.outcome"] for p in runs] == ["cancelled"]


def test_rounds_wait_the_interval_within_the_deadline(telemetry, gpt2):
    started = time.monotonic()
    results = _canary(telemetry, gpt2, [QUICK]).run(count=3, interval=0.3, timeout=60)
    assert [r.round for r in results] == [1, 2, 3]
    assert time.monotonic() - started >= 0.6
    started = time.monotonic()
    results = _canary(telemetry, gpt2, [QUICK]).run(count=3, interval=30, timeout=0.5)
    assert [r.round for r in results] == [1] and time.monotonic() - started < 2.0


def test_needle_prompt_fits_and_plants_one_fact():
    limit = 900
    prompt = needle_prompt(lambda text: len(text) <= limit, depth=0.5)
    assert len(prompt) <= limit and len(needle_prompt(lambda text: True)) > limit
    assert prompt.count(NEEDLE_VALUE) == 1 and prompt.endswith(f"assert {NEEDLE_NAME} == ")
    planted = prompt.index(f"{NEEDLE_NAME} = {NEEDLE_VALUE}")
    assert 0.25 < planted / len(prompt) < 0.75
    assert NEEDLE_VALUE in needle_prompt(lambda text: False)  # too small a model still gets one block


@pytest.mark.parametrize(
    "arguments",
    [
        ["probe"],
        ["probe", "--demo", "--count", "0"],
        ["probe", "--demo", "--model", "x"],
        ["probe", "--demo", "--probes", "haystack"],
    ],
)
def test_usage_errors(arguments, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(arguments)
    assert exit_info.value.code == 2


def test_a_missing_model_is_an_error(tmp_path, capsys):
    assert cli.main(["probe", "--model", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err


def _run_cli(model_dir: Path, endpoint: str, *options: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "corevital_otel.cli", "probe", "--model", str(model_dir), *options]
    return subprocess.Popen(
        command,
        env=subprocess_env(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _sum(metric) -> float:
    points = metric.sum.data_points if metric.HasField("sum") else metric.histogram.data_points
    return (
        sum(p.as_int or p.as_double for p in points)
        if metric.HasField("sum")
        else sum(p.count for p in points)
    )


def test_cli_exports_to_otlp_and_exits_within_its_bound(model_dir, otlp_receiver):
    started = time.monotonic()
    process = _run_cli(
        model_dir, otlp_receiver.endpoint, "--count", "2", "--interval", "0.2", "--timeout", "60"
    )
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    assert time.monotonic() - started < 60
    assert "6 probe runs" in stdout and "OTLP export sent" in stdout
    spans = otlp_receiver.spans()
    probes = [span for span in spans if span.name.startswith("corevital.probe ")]
    assert Counter(span.name for span in probes) == {f"corevital.probe {name}": 2 for name in PROBE_NAMES}
    for probe in probes:
        values = attributes(probe.attributes)
        assert values["corevital.probe.outcome"] in ("pass", "fail")
        assert values["gen_ai.request.model"] == model_dir.name  # the directory's name, never its path
        [generation] = [s for s in otlp_receiver.generation_spans() if s.parent_span_id == probe.span_id]
        assert attributes(generation.attributes)["corevital.context.probe"] == values["corevital.probe.name"]
    metrics = otlp_receiver.metrics()
    assert _sum(metrics["corevital.probe.runs"]) == 6
    assert _sum(metrics["corevital.probe.duration"]) == 6
    names = {
        attributes(p.attributes)["corevital.probe.name"]
        for p in metrics["corevital.probe.runs"].sum.data_points
    }
    assert names == set(PROBE_NAMES)


def test_cli_stops_cleanly_on_sigterm(model_dir, otlp_receiver):
    process = _run_cli(
        model_dir, otlp_receiver.endpoint, "--count", "100", "--interval", "30", "--timeout", "120"
    )
    assert process.stdout is not None
    while "round 1" not in process.stdout.readline():  # the first probe finished
        assert process.poll() is None
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr[-3000:]
    assert time.monotonic() - started < 15
    assert "probe runs:" in stdout and "OTLP export sent" in stdout
    assert otlp_receiver.spans()  # what ran before the signal was flushed
