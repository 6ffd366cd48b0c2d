"""Per-step plugin outputs, kept on the model's device and moved to the host in one transfer at the end."""

from __future__ import annotations

import numpy as np
import torch

from .results import StepSeries

# Merge a series' chunks into one every this many chunks: the Python objects kept per name stay bounded
# however long the generation runs (per-step plugins add one chunk per step), with no host sync.
_MAX_CHUNKS = 64


def _assemble(chunks: list[tuple[int, torch.Tensor]], begin: int, end: int) -> torch.Tensor:
    """Steps ``begin .. end - 1`` of a series from its chunks; steps no chunk covers are NaN."""
    first = chunks[0][1]
    if len(chunks) == 1 and chunks[0][0] == begin and first.shape[0] == end - begin:
        return first
    out = torch.full((end - begin, *first.shape[1:]), float("nan"), device=first.device)
    for start, values in chunks:
        stop = min(end, start + values.shape[0])
        if stop > start:
            out[start - begin : stop - begin] = values[: stop - start]
    return out


class SeriesCollector:
    """Collects ``name -> (steps, rows, ...)`` tensors by block; a step a plugin skipped becomes NaN."""

    def __init__(self) -> None:
        self._chunks: dict[str, list[tuple[int, torch.Tensor]]] = {}

    def add_block(self, start: int, name: str, values: torch.Tensor) -> None:
        """``values`` ``(n, rows, ...)`` for steps ``start .. start + n - 1``."""
        chunks = self._chunks.setdefault(name, [])
        chunks.append((start, values.detach().float()))
        if len(chunks) >= _MAX_CHUNKS:
            begin = chunks[0][0]
            end = max(s + v.shape[0] for s, v in chunks)
            chunks[:] = [(begin, _assemble(chunks, begin, end))]

    def add(self, step: int, name: str, value: torch.Tensor) -> None:
        """One step's ``(rows, ...)`` value."""
        self.add_block(step, name, value.unsqueeze(0))

    def host_series(
        self,
        steps: int,
        rows: int,
        generated: torch.Tensor | None,
        output_tokens: list[int],
        seconds: list[float],
    ) -> StepSeries:
        """The step series on the host, with the chosen tokens and the mask of real steps (a row's steps
        end with its generated tokens; ``generated`` None when the rows cannot be matched, e.g. beams)."""
        mask = np.ones((steps, rows), dtype=bool)
        tokens = np.full((steps, rows), -1, dtype=np.int64)
        if generated is not None:
            host = generated.cpu().numpy()
            width = min(steps, host.shape[1])
            tokens[:width] = host[:, :width].T
            for row, length in enumerate(output_tokens[:rows]):
                mask[length:, row] = False
        return self.to_host(steps, mask, tokens, np.asarray(seconds[:steps], dtype=np.float64))

    def to_host(self, steps: int, mask: np.ndarray, tokens: np.ndarray, seconds: np.ndarray) -> StepSeries:
        stacked = {name: _assemble(chunks, 0, steps) for name, chunks in self._chunks.items() if chunks}
        arrays: dict[str, np.ndarray] = {}
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
