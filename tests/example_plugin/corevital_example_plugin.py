"""A third-party corevital_otel plugin: how much probability the model gave to each token it chose.

Per generated token and sequence it computes p(chosen token) under the model's raw distribution (on
the model's device, no host sync), then reports the mean per sequence as a span attribute and every
value on a histogram. It imports nothing but the public ``corevital_otel`` API.
"""

from __future__ import annotations

import numpy as np
import torch

from corevital_otel import GenerationInfo, GenerationResults, MetricSpec, StepCapture, StepSeries, hookimpl

COREVITAL_PLUGIN_NAME = "example"
SERIES = "example.chosen_probability"
MEAN_ATTRIBUTE = "corevital.example.chosen_probability.mean"
METRIC = "corevital.example.chosen_probability"


@hookimpl
def corevital_declare_metrics() -> list[MetricSpec]:
    return [
        MetricSpec(
            METRIC,
            "1",
            "histogram",
            "Probability the model gave to each token it chose.",
            (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99),
        )
    ]


@hookimpl
def corevital_step(step: StepCapture) -> dict[str, torch.Tensor] | None:
    if step.logits is None or step.chosen is None:
        return None  # this step's value becomes NaN in the series
    probabilities = torch.softmax(step.logits, dim=-1)
    return {SERIES: probabilities.gather(-1, step.chosen.view(-1, 1).long()).squeeze(-1)}


@hookimpl
def corevital_summarize(info: GenerationInfo, series: StepSeries, results: GenerationResults) -> None:
    values = series.get(SERIES)
    if values is None:
        return
    # Only the steps where a sequence really produced a token (not padding after its EOS).
    real = series.mask & np.isfinite(values)
    counts = real.sum(axis=0)
    sums = np.where(real, values, 0.0).sum(axis=0)
    results.set(MEAN_ATTRIBUTE, [float(s / c) if c else None for s, c in zip(sums, counts, strict=True)])
    for value in values[real]:
        results.record_metric(METRIC, float(value))
