"""Repetition-loop evidence, tracked online on the model's device while generation runs.

Two kinds of evidence, either of which means a loop is under way at a step:

- recurring states: the last decoder layer's output (pre-final-norm) points the same way as ``p`` steps
  earlier (cosine >= ``repetition_similarity``) for ``repetition_min_steps`` consecutive steps at one lag
  ``p <= repetition_max_period``: the model revisits the same internal state;
- a literal token loop: the chosen tokens repeat a period ``p <= repetition_max_period`` at least
  ``token_loop_min_repeats`` times over at least ``token_loop_min_tokens`` tokens.

The last ``repetition_max_period`` states and tokens live in a small buffer held in one generation's
plugin state; only similarities and 0/1 indicators leave it, never the vectors. Steps arrive in blocks:
each block is compared with the buffer and with itself in a few vectorised operations (lagged views of
the history, streaks from a cumulative maximum), so the result is the same as stepping one by one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn import functional

from corevital_otel.plugins._profiles import Thresholds


def _lagged(history: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """``(steps, rows, period, ...)``: for each block step, the values ``1..period`` steps before it.

    ``history`` ``(period, rows, ...)`` is newest first (the buffer), ``block`` ``(steps, rows, ...)``."""
    period, steps = history.shape[0], block.shape[0]
    sequence = torch.cat([history.flip(0), block])  # oldest first: (period + steps, rows, ...)
    index = (
        torch.arange(steps, device=block.device)[:, None]
        + period
        - torch.arange(1, period + 1, device=block.device)
    )
    return sequence[index].transpose(1, 2)


def _newest_first(history: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """The buffer after the block: the last ``period`` values, newest first."""
    period = history.shape[0]
    return torch.cat([history.flip(0), block])[-period:].flip(0)


def streaks(previous: torch.Tensor | None, hits: torch.Tensor) -> torch.Tensor:
    """Consecutive-hit counters per step for ``hits`` ``(steps, ...)``, continuing ``previous`` ``(...)``:
    +1 where a step hits, back to 0 where it does not."""
    steps = hits.shape[0]
    index = torch.arange(steps, device=hits.device).view(steps, *([1] * (hits.dim() - 1)))
    # Index of the last miss at or before each step (-1 when none in this block).
    misses = torch.where(hits, torch.full_like(index, -1).expand_as(hits), index.expand_as(hits))
    last_miss = torch.cummax(misses, dim=0).values
    carried = torch.zeros_like(hits, dtype=torch.long) if previous is None else previous.expand_as(hits)
    return torch.where(last_miss >= 0, index - last_miss, carried + index + 1)


@dataclass
class LoopTracker:
    """On-device buffers of one generation: recent states and tokens, and per-lag streak counters."""

    thresholds: Thresholds
    states: torch.Tensor | None = None  # (period, rows, dim), newest first
    tokens: torch.Tensor | None = None  # (period, rows), -1 = unknown
    state_streak: torch.Tensor | None = None  # (rows, period)
    token_streak: torch.Tensor | None = None
    seen: int = 0
    _token_run: torch.Tensor | None = field(default=None, repr=False)  # (period,) run length per lag

    @property
    def period(self) -> int:
        return self.thresholds.repetition_max_period

    def similarities(self, states: torch.Tensor) -> torch.Tensor:
        """``(steps, rows, period)`` cosine of each of ``states`` ``(steps, rows, dim)`` with the states
        ``1..period`` steps before it (NaN for lags reaching before the first step)."""
        states = states.float()
        if self.states is None or self.states.shape[1:] != states.shape[1:]:
            self.states = torch.zeros((self.period, *states.shape[1:]), device=states.device)
        earlier = _lagged(self.states, states)  # (steps, rows, period, dim)
        cosine = functional.cosine_similarity(states.unsqueeze(2), earlier, dim=-1)
        steps = states.shape[0]
        reach = torch.arange(steps, device=states.device)[:, None] + self.seen  # steps seen before each
        before_start = torch.arange(1, self.period + 1, device=states.device)[None, :] > reach
        cosine = cosine.masked_fill(before_start.unsqueeze(1), float("nan"))
        self.states = _newest_first(self.states, states)
        return cosine

    def state_loop(self, similarity: torch.Tensor) -> torch.Tensor:
        hits = similarity >= self.thresholds.repetition_similarity
        streak = streaks(self.state_streak, hits)
        self.state_streak = streak[-1]
        return (streak >= self.thresholds.repetition_min_steps).any(dim=-1)

    def token_loop(
        self, chosen: torch.Tensor | None, steps: int, rows: int, device: torch.device
    ) -> torch.Tensor:
        tokens = (
            torch.full((steps, rows), -1, dtype=torch.long, device=device)
            if chosen is None
            else chosen.long()
        )
        if self.tokens is None or self.tokens.shape[1] != rows:
            self.tokens = torch.full((self.period, rows), -1, dtype=torch.long, device=device)
            lags = torch.arange(1, self.period + 1, device=device)
            # A loop of period p spans max(p * repeats, min_tokens) tokens: that many minus p matches.
            t = self.thresholds
            self._token_run = torch.maximum(
                lags * (t.token_loop_min_repeats - 1), t.token_loop_min_tokens - lags
            )
        earlier = _lagged(self.tokens, tokens)  # (steps, rows, period)
        same = (tokens.unsqueeze(-1) == earlier) & (tokens.unsqueeze(-1) >= 0)
        streak = streaks(self.token_streak, same)
        self.token_streak = streak[-1]
        self.tokens = _newest_first(self.tokens, tokens)
        return (streak >= self._token_run).any(dim=-1)

    def block(
        self, hidden_last: torch.Tensor | None, chosen: torch.Tensor | None, rows: int, device: torch.device
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """A block of steps, ``hidden_last`` ``(steps, rows, dim)`` and ``chosen`` ``(steps, rows)`` (``-1`` =
        unknown): ``(steps, rows)`` largest cosine with a recent state (None without hidden states; NaN on
        the first step) and ``(steps, rows)`` loop evidence, bit flags: 1 = a literal token loop,
        2 = recurring states (3 = both, 0 = no loop)."""
        steps = hidden_last.shape[0] if hidden_last is not None else chosen.shape[0]  # type: ignore[union-attr]
        evidence = self.token_loop(chosen, steps, rows, device).float()
        best = None
        if hidden_last is not None:
            similarity = self.similarities(hidden_last)
            evidence = evidence + 2.0 * self.state_loop(similarity).float()
            strongest = torch.where(similarity.isnan(), float("-inf"), similarity).amax(dim=-1)
            best = torch.where(strongest.isinf(), float("nan"), strongest)
        self.seen += steps
        return best, evidence
