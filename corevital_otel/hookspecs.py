"""The plugin API: pluggy hook specifications and the plain-data types they exchange.

A metric plugin is any object (often a module) with functions marked ``@hookimpl`` whose names match
the specs below. Plugins never touch OpenTelemetry: they return tensors, floats and dicts, and the core
turns them into span attributes, events and metric recordings.

Phases run in this order for every generate() call; a later phase sees everything earlier phases wrote,
so dependencies between plugins need no registration order:

1. ``corevital_generation_start`` once, before the first forward pass;
2. ``corevital_prompt`` once, with the prefill (or seq2seq encoder) pass;
3. ``corevital_steps`` once per block of generated tokens (or ``corevital_step`` once per token), on the
   model's device, without host syncs;
4. ``corevital_summarize`` once, on host data: step series -> aggregates;
5. ``corevital_assess`` once: flags, risk, blame, built from the aggregates;
6. ``corevital_explain`` once: narrative text built from everything above.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import torch

    from .capture.records import PromptCapture, StepBlock, StepCapture
    from .results import GenerationInfo, GenerationResults, StepSeries
    from .telemetry_types import InterventionSignal, MetricSpec

PROJECT_NAME = "corevital_otel"
ENTRY_POINT_GROUP = "corevital_otel"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class CoreVitalHookSpecs:
    """Hook specifications every CoreVital metric plugin implements a subset of."""

    @hookspec
    def corevital_declare_metrics(self) -> list[MetricSpec]:
        """Declare the OTLP metrics this plugin records (name, unit, kind, description, buckets).

        Called once when instrumentation starts; the core creates each instrument once. A plugin records
        values with ``results.record_metric(name, value, attributes)``; recording an undeclared name is an
        error that the core counts against the plugin.
        """

    @hookspec
    def corevital_declare_interventions(self) -> list[InterventionSignal]:
        """Offer intervention policies: each names a step series this plugin returns from
        ``corevital_steps`` whose value stops a row once it reaches the policy's threshold.

        Called once when instrumentation starts; ``instrument(intervene=[...])`` may only name declared
        policies. The series must be computed whenever ``info.consumed_live`` says it is read live.
        """

    @hookspec
    def corevital_check_options(self, options: Mapping[str, Any]) -> None:
        """Validate this plugin's settings once, at instrument() time (``options`` is the
        ``plugin_options`` mapping; environment variables the plugin reads are checked here too).

        Raise ``ValueError`` or ``TypeError`` for an invalid setting: instrument() then fails with a
        ``ConfigError`` naming the plugin, instead of every later generation reporting the problem.
        """

    @hookspec
    def corevital_generation_start(self, info: GenerationInfo) -> None:
        """A generate() call begins. ``info`` describes the model and request; ``info.state`` is a dict
        private to each plugin (keyed by plugin name) for per-generation scratch data."""

    @hookspec
    def corevital_prompt(self, info: GenerationInfo, prompt: PromptCapture) -> dict[str, Any] | None:
        """The prompt was processed (prefill pass, or the encoder for seq2seq models).

        Return plain host values (floats, lists, numpy arrays) keyed by attribute name; they are merged
        into the results' attributes. Runs after the prefill forward, before decoding continues.
        """

    @hookspec
    def corevital_steps(self, info: GenerationInfo, block: StepBlock) -> dict[str, torch.Tensor] | None:
        """A block of consecutive generated tokens: raw logits, new-position hidden states and new-query
        attention of each, with a leading steps dimension (see :class:`StepBlock`).

        Return small tensors whose first two dimensions are ``(block.steps, block.rows)``, e.g.
        ``(steps, rows)`` or ``(steps, rows, layers)``, computed for the whole block at once: that is what
        keeps capture cheap. They stay on the model's device; the core appends them to step series and
        moves everything to the host in one transfer after generate() returns. Never call ``.item()``,
        ``.cpu()`` or ``.tolist()`` here: on a GPU each one stalls generation.

        Blocks arrive in step order, every few steps and at the end; a block is a single step when
        something reads step values while generating (``on_step``, interventions), so a plugin that
        carries state from step to step (a running average, a loop detector) sees every step in order.
        """

    @hookspec
    def corevital_step(self, info: GenerationInfo, step: StepCapture) -> dict[str, torch.Tensor] | None:
        """One generated token's capture (the per-token form of ``corevital_steps``, simpler to write,
        dearer to run: it is called once per token with views into the block).

        Return small tensors whose first dimension is the batch row (``step.rows``), e.g. ``(rows,)`` or
        ``(rows, layers)``. Same rules as ``corevital_steps``: on the device, no host syncs.
        """

    @hookspec
    def corevital_summarize(
        self, info: GenerationInfo, series: StepSeries, results: GenerationResults
    ) -> None:
        """Turn step series (host numpy arrays, ``(steps, rows, ...)``) into aggregates on ``results``."""

    @hookspec
    def corevital_assess(self, info: GenerationInfo, series: StepSeries, results: GenerationResults) -> None:
        """Derive decisions from aggregates: health flags, risk, layer blame."""

    @hookspec
    def corevital_explain(self, info: GenerationInfo, series: StepSeries, results: GenerationResults) -> None:
        """Write human-readable explanations (narratives) from everything computed so far."""
