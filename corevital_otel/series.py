"""Per-step plugin outputs, kept on the model's device and moved to the host in one transfer at the end."""

from __future__ import annotations

import numpy as np
import torch

from .results import StepSeries

# Stack step tensors into one block every this many steps: the Python objects kept per name stay
# bounded (one per block) however long the generation runs, with no host sync.
_BLOCK_STEPS = 64


class SeriesCollector:
    """Collects ``name -> (rows, ...)`` tensors per step; a step a plugin skipped becomes NaN."""

    def __init__(self) -> None:
        self._blocks: dict[str, list[torch.Tensor]] = {}
        self._pending: dict[str, list[torch.Tensor]] = {}
        self._next_step: dict[str, int] = {}

    def add(self, step: int, name: str, value: torch.Tensor) -> None:
        value = value.detach().float()
        expected = self._next_step.get(name, 0)
        pending = self._pending.setdefault(name, [])
        while expected < step:  # the plugin produced nothing for the steps in between
            pending.append(torch.full_like(value, float("nan")))
            expected += 1
        pending.append(value)
        self._next_step[name] = step + 1
        if len(pending) >= _BLOCK_STEPS:
            self._blocks.setdefault(name, []).append(torch.stack(pending))
            pending.clear()

    def to_host(self, steps: int, mask: np.ndarray, tokens: np.ndarray, seconds: np.ndarray) -> StepSeries:
        stacked: dict[str, torch.Tensor] = {}
        for name, pending in self._pending.items():
            blocks = list(self._blocks.get(name, []))
            if pending:
                blocks.append(torch.stack(pending))
            if not blocks:  # an add() interrupted before its first value was kept
                continue
            series = torch.cat(blocks)[:steps]
            if series.shape[0] < steps:  # steps after the plugin's last output
                filler = torch.full(
                    (steps - series.shape[0], *series.shape[1:]), float("nan"), device=series.device
                )
                series = torch.cat([series, filler])
            stacked[name] = series
        arrays: dict[str, np.ndarray] = {}
        if stacked:
            by_device: dict[torch.device, list[str]] = {}
            for name, tensor in stacked.items():
                by_device.setdefault(tensor.device, []).append(name)
            for names in by_device.values():
                # One device->host copy per device for every series together.
                flat = torch.cat([stacked[name].reshape(-1) for name in names]).cpu().numpy()
                offset = 0
                for name in names:
                    size = stacked[name].numel()
                    arrays[name] = flat[offset : offset + size].reshape(tuple(stacked[name].shape))
                    offset += size
        return StepSeries(arrays=arrays, mask=mask, tokens=tokens, step_seconds=seconds)
