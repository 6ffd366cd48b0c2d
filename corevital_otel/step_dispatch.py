"""Hands each captured block of steps to the plugins and keeps what they return as step series.

Plugins see steps in two shapes (see ``hookspecs``): ``corevital_steps`` gets a whole
:class:`~.capture.records.StepBlock` and returns ``(steps, rows, ...)`` tensors, computed in a few
vectorised operations; ``corevital_step`` gets one step at a time (views into the block) and returns
``(rows, ...)`` tensors. Values are checked here, so a plugin's bad output costs that plugin, never the
generation or the other plugins.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .capture.records import StepBlock
from .plugin_host import PluginFailure, PluginHost
from .results import GenerationInfo
from .series import SeriesCollector

logger = logging.getLogger(__name__)

# Per-step plugin values are meant to be small (a value per row, layer or head): far above any of those.
MAX_STEP_VALUES_PER_ROW = 65_536

OnStep = Callable[[GenerationInfo, int, Mapping[str, torch.Tensor]], None]


def step_value_problem(name: Any, value: Any, leading: tuple[int, ...]) -> Exception | None:
    """Why a plugin's value cannot become a step series, or None when it can.

    ``leading`` is the shape it must start with: ``(rows,)`` for one step, ``(steps, rows)`` for a block.
    """
    if not isinstance(name, str):
        return TypeError(f"step value name {name!r} must be a string")
    dims = " x ".join(str(size) for size in leading)
    if not isinstance(value, torch.Tensor) or tuple(value.shape[: len(leading)]) != leading:
        return TypeError(f"step value {name!r} must be a tensor with leading dimensions {dims}")
    # Kept on the device until generate() returns: an oversized value would grow memory with the
    # generated length (shape metadata only, no host sync).
    per_row = value.numel() // max(1, math.prod(leading))
    if per_row > MAX_STEP_VALUES_PER_ROW:
        return ValueError(f"step value {name!r}: {per_row} values per row (limit {MAX_STEP_VALUES_PER_ROW})")
    return None


class StepDispatcher:
    """Runs the step phase of one generation: blocks in, step series and live step values out."""

    def __init__(
        self,
        plugins: PluginHost,
        info: GenerationInfo,
        failures: list[PluginFailure],
        series: SeriesCollector,
        on_step: OnStep | None,
    ) -> None:
        self.plugins = plugins
        self.info = info
        self.failures = failures
        self.series = series
        self.on_step = on_step
        self.per_step_plugins = bool(plugins.implementations("corevital_step"))
        self.last_outputs: dict[str, torch.Tensor] = {}  # the newest step's values (for interventions)

    def deliver_prompt(self, prompt: Any) -> dict[str, Any]:
        """Run the plugins' prompt phase; the attribute values they returned, merged."""
        merged: dict[str, Any] = {}
        phase = "corevital_prompt"
        for plugin, values in self.plugins.call_each(phase, self.failures, info=self.info, prompt=prompt):
            if values is not None and not isinstance(values, Mapping):
                error = TypeError(f"prompt values must be a mapping, not {type(values).__name__}")
                self.plugins.record_failure(self.failures, plugin, phase, error)
            elif values:
                merged.update(values)
        return merged

    def _accepted(self, plugin: str, phase: str, values: Any, leading: tuple[int, ...]):
        if values is None:
            return
        if not isinstance(values, Mapping):
            error = TypeError(f"step values must be a mapping, not {type(values).__name__}")
            self.plugins.record_failure(self.failures, plugin, phase, error)
            return
        for name, value in values.items():
            problem = step_value_problem(name, value, leading)
            if problem is not None:
                self.plugins.record_failure(self.failures, plugin, phase, problem)
                continue
            yield name, value

    def deliver(self, block: StepBlock) -> None:
        block_outputs: dict[str, torch.Tensor] = {}
        for plugin, values in self.plugins.call_each(
            "corevital_steps", self.failures, info=self.info, block=block
        ):
            for name, value in self._accepted(plugin, "corevital_steps", values, (block.steps, block.rows)):
                self.series.add_block(block.start, name, value)
                block_outputs[name] = value
        step_outputs: list[dict[str, torch.Tensor]] = [{} for _ in range(block.steps)]
        if self.per_step_plugins:
            for offset in range(block.steps):
                step = block.step(offset)
                for plugin, values in self.plugins.call_each(
                    "corevital_step", self.failures, info=self.info, step=step
                ):
                    for name, value in self._accepted(plugin, "corevital_step", values, (block.rows,)):
                        self.series.add(step.index, name, value)
                        step_outputs[offset][name] = value
        if self.on_step is None:  # only interventions read live values: the newest step's
            self.last_outputs = {name: value[-1] for name, value in block_outputs.items()}
            self.last_outputs.update(step_outputs[-1])
            return
        for offset in range(block.steps):
            outputs = {name: value[offset] for name, value in block_outputs.items()}
            outputs.update(step_outputs[offset])
            self.last_outputs = outputs
            if self.on_step is not None:
                try:
                    self.on_step(self.info, block.start + offset, outputs)
                except Exception:  # noqa: BLE001
                    logger.warning("corevital on_step callback failed", exc_info=True)
