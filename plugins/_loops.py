"""Repetition-loop evidence, tracked online on the model's device while generation runs.

Two kinds of evidence, either of which means a loop is under way at a step:

- recurring states: the last decoder layer's output (pre-final-norm) points the same way as ``p`` steps
  earlier (cosine >= ``repetition_similarity``) for ``repetition_min_steps`` consecutive steps at one lag
  ``p <= repetition_max_period``: the model revisits the same internal state;
- a literal token loop: the chosen tokens repeat a period ``p <= repetition_max_period`` at least
  ``token_loop_min_repeats`` times over at least ``token_loop_min_tokens`` tokens.

The last ``repetition_max_period`` states and tokens live in a small buffer held in one generation's
plugin state; only similarities and 0/1 indicators leave it, never the vectors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn import functional

from corevital_otel.plugins._profiles import Thresholds


def _streak(streak: torch.Tensor | None, hit: torch.Tensor) -> torch.Tensor:
    """Consecutive-hit counters: +1 where ``hit``, back to 0 elsewhere."""
    previous = torch.zeros_like(hit, dtype=torch.long) if streak is None else streak
    return torch.where(hit, previous + 1, torch.zeros_like(previous))


def _shift_in(buffer: torch.Tensor, newest: torch.Tensor) -> torch.Tensor:
    """Newest first: ``buffer[j]`` is ``j + 1`` steps back after the next call. Shifting (rather than a ring
    index) needs no index tensor copied to the device each step."""
    return torch.cat([newest.unsqueeze(0), buffer[:-1]])


@dataclass
class LoopTracker:
    """On-device buffers of one generation: recent states and tokens, and per-lag streak counters."""

    thresholds: Thresholds
    states: torch.Tensor | None = None  # (period, rows, dim)
    tokens: torch.Tensor | None = None  # (period, rows), -1 = unknown
    state_streak: torch.Tensor | None = None  # (rows, period)
    token_streak: torch.Tensor | None = None
    seen: int = 0
    _token_run: torch.Tensor | None = field(default=None, repr=False)  # (period,) run length per lag

    @property
    def period(self) -> int:
        return self.thresholds.repetition_max_period

    def similarities(self, state: torch.Tensor) -> torch.Tensor:
        """``(rows, period)`` cosine of ``state`` with the states ``1..period`` steps back (NaN before)."""
        state = state.float()
        if self.states is None or self.states.shape[1:] != state.shape:
            self.states = torch.zeros((self.period, *state.shape), device=state.device)
        cosine = functional.cosine_similarity(state.unsqueeze(0), self.states, dim=-1).T
        if self.seen < self.period:  # lags reaching before the first step have nothing to compare with
            cosine[:, self.seen :] = float("nan")
        self.states = _shift_in(self.states, state)
        return cosine

    def state_loop(self, similarity: torch.Tensor) -> torch.Tensor:
        self.state_streak = _streak(self.state_streak, similarity >= self.thresholds.repetition_similarity)
        return (self.state_streak >= self.thresholds.repetition_min_steps).any(dim=-1)

    def token_loop(self, chosen: torch.Tensor | None, rows: int, device: torch.device) -> torch.Tensor:
        token = torch.full((rows,), -1, dtype=torch.long, device=device) if chosen is None else chosen.long()
        if self.tokens is None:
            self.tokens = torch.full((self.period, rows), -1, dtype=torch.long, device=device)
            lags = torch.arange(1, self.period + 1, device=device)
            # A loop of period p spans max(p * repeats, min_tokens) tokens: that many minus p matches.
            t = self.thresholds
            self._token_run = torch.maximum(
                lags * (t.token_loop_min_repeats - 1), t.token_loop_min_tokens - lags
            )
        same = (token.unsqueeze(-1) == self.tokens.T) & (token.unsqueeze(-1) >= 0)  # (rows, period)
        self.token_streak = _streak(self.token_streak, same)
        self.tokens = _shift_in(self.tokens, token)
        return (self.token_streak >= self._token_run).any(dim=-1)

    def step(
        self, hidden_last: torch.Tensor | None, chosen: torch.Tensor | None, rows: int, device: torch.device
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """One step: ``(rows,)`` largest cosine with a recent state (None without hidden states; NaN on the
        first step) and ``(rows,)`` loop evidence, bit flags: 1 = a literal token loop, 2 = recurring
        states (3 = both, 0 = no loop)."""
        evidence = self.token_loop(chosen, rows, device).float()
        best = None
        if hidden_last is not None:
            similarity = self.similarities(hidden_last)
            evidence = evidence + 2.0 * self.state_loop(similarity).float()
            strongest = torch.where(similarity.isnan(), float("-inf"), similarity).amax(dim=-1)
            best = torch.where(strongest.isinf(), float("nan"), strongest)
        self.seen += 1
        return best, evidence
