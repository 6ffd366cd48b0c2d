"""Helpers shared by the telemetry tests."""

from __future__ import annotations

from typing import Any

import torch
import transformers

from corevital_otel import GenerationResults, StepSeries, hookimpl
from tests.support.tiny_models import CONFIGS


def long_context_gpt2(positions: int, seed: int = 0) -> torch.nn.Module:
    """The tiny GPT-2 of tiny_models with room for ``positions`` tokens (prompt + generation)."""
    torch.manual_seed(seed)
    config = CONFIGS["gpt2"]()
    config.n_positions = positions
    return transformers.AutoModelForCausalLM.from_config(config).eval()


class ResultsSpy:
    """Keeps what the plugins produced for each generation (after every other plugin ran)."""

    COREVITAL_PLUGIN_NAME = "results_spy"

    def __init__(self) -> None:
        self.results: list[GenerationResults] = []
        self.series: dict[str, Any] = {}  # the last generation's (steps, rows) step series, exact

    @property
    def series_names(self) -> list[str]:
        return sorted(self.series)

    @hookimpl(trylast=True)
    def corevital_explain(self, series: StepSeries, results: GenerationResults) -> None:
        self.results.append(results)
        self.series = {name: array for name, array in series.arrays.items() if array.ndim == 2}


class Filler:
    """Writes ``count`` extra scalar attributes, to push a span over its attribute limit."""

    COREVITAL_PLUGIN_NAME = "filler"

    def __init__(self, count: int) -> None:
        self.count = count

    @hookimpl
    def corevital_summarize(self, results: GenerationResults) -> None:
        for index in range(self.count):
            results.set(f"corevital.filler.{index:03d}", index)


def step_events(span: Any) -> list[Any]:
    return [event for event in span.events if event.name == "corevital.step"]
