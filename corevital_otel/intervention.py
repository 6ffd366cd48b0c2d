"""Opt-in intervention: stop a row's generation early when a per-step signal fires.

It is a transformers ``StoppingCriteria`` appended to the caller's own criteria, so the caller gets a
normal, shorter output. transformers calls stopping criteria right after it appended the step's
token, so the criterion first hands the pending step (now complete with its chosen token) to the
plugins, then reads the step signals they returned, all on the device: the boolean it returns is
what generate() already syncs on to decide whether to stop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .telemetry_types import InterventionSignal


@dataclass(frozen=True)
class InterventionPolicy:
    name: str
    signal: str
    threshold: float


def policies_for(
    names: frozenset[str], configured_threshold: float, offered: Mapping[str, InterventionSignal]
) -> tuple[InterventionPolicy, ...]:
    """The chosen policies among those plugins offer (checked at instrument() time), in name order."""
    return tuple(
        InterventionPolicy(
            name,
            offered[name].series,
            configured_threshold if offered[name].threshold is None else offered[name].threshold,
        )
        for name in sorted(names)
        if name in offered
    )


def _stopping_criteria_base() -> type:
    from transformers.generation.stopping_criteria import StoppingCriteria

    return StoppingCriteria


class InterventionRecord:
    """Which rows an intervention stopped, at which step and why (device tensors until the end)."""

    def __init__(self, policies: tuple[InterventionPolicy, ...]) -> None:
        self.policies = policies
        self.stop_step: torch.Tensor | None = None  # (rows,) step index, -1 = not stopped
        self.stop_policy: torch.Tensor | None = None  # (rows,) index into policies, -1 = none

    def update(self, step: int, outputs: Mapping[str, torch.Tensor], rows: int, device: Any) -> torch.Tensor:
        if self.stop_step is None:
            self.stop_step = torch.full((rows,), -1, dtype=torch.long, device=device)
            self.stop_policy = torch.full((rows,), -1, dtype=torch.long, device=device)
        fired = torch.zeros(rows, dtype=torch.bool, device=device)
        for index, policy in enumerate(self.policies):
            signal = outputs.get(policy.signal)
            if signal is None:
                continue
            hit = (signal.reshape(rows, -1).amax(dim=-1) >= policy.threshold) & ~fired
            newly = hit & (self.stop_step < 0)
            self.stop_policy = torch.where(newly, index, self.stop_policy)
            self.stop_step = torch.where(newly, step, self.stop_step)
            fired |= hit
        return fired

    def on_host(self) -> list[tuple[int, str] | None]:
        """Per row: (step, policy name) where it was stopped, or None."""
        if self.stop_step is None or self.stop_policy is None:
            return []
        steps = self.stop_step.cpu().tolist()
        policies = self.stop_policy.cpu().tolist()
        return [
            None if step < 0 else (step, self.policies[p].name)
            for step, p in zip(steps, policies, strict=True)
        ]


def make_stopping_criterion(
    deliver_now: Callable[[torch.Tensor], tuple[int, Mapping[str, torch.Tensor]] | None],
    record: InterventionRecord,
) -> Any:
    """A StoppingCriteria that delivers the pending step and stops rows whose signals fired."""
    base = _stopping_criteria_base()

    class CoreVitalIntervention(base):  # type: ignore[misc, valid-type]
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            rows = input_ids.shape[0]
            delivered = deliver_now(input_ids[:, -1])
            if delivered is None:
                return torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
            step, outputs = delivered
            return record.update(step, outputs, rows, input_ids.device)

    return CoreVitalIntervention()


def apply_stops(record: InterventionRecord | None, completion: Any, results: Any) -> list[str]:
    """Mark rows an intervention stopped (finish reason ``intervention``, tokens up to the stop) and say
    so in ``results``; return the policy of each stop."""
    if record is None:
        return []
    stops = record.on_host()
    for row, stop in enumerate(stops):
        if stop is not None and row < len(completion.finish_reasons):
            completion.finish_reasons[row] = "intervention"
            # The row kept the tokens of steps 0..stop_step; what follows is padding.
            completion.output_tokens[row] = min(completion.output_tokens[row], stop[0] + 1)
    results.set("corevital.intervention.stopped", any(stop is not None for stop in stops))
    results.set_rows("corevital.intervention.reasons", [stop[1] if stop else "" for stop in stops])
    results.set_rows("corevital.intervention.steps", [stop[0] if stop else -1 for stop in stops])
    for stop in stops:
        if stop is not None:
            results.flag_step(stop[0], f"intervention:{stop[1]}")
    return [stop[1] for stop in stops if stop is not None]


def with_stopping_criterion(
    kwargs: dict,
    deliver_now: Callable[[torch.Tensor], tuple[int, Mapping[str, torch.Tensor]] | None],
    record: InterventionRecord | None,
) -> dict:
    """generate()'s keyword arguments plus our stopping criterion (after the caller's own) when there is
    an intervention ``record`` to fill; the caller's arguments as they are otherwise."""
    if record is None:
        return kwargs
    from transformers.generation.stopping_criteria import StoppingCriteriaList

    existing = kwargs.get("stopping_criteria") or []
    criterion = make_stopping_criterion(deliver_now, record)
    return {**kwargs, "stopping_criteria": StoppingCriteriaList([*existing, criterion])}
