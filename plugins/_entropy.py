"""Shannon entropy of probability rows (the attention plugin's; logits have their own shifted form)."""

from __future__ import annotations

import math

import torch

LN2 = math.log(2.0)
# log() of an exact 0 takes a slow path on the CPU (about 7x a normal value); probabilities are clamped to
# the smallest normal float32 first. A probability below it contributes under 1e-36 nats either way, and
# a zero still contributes exactly 0 (0 * log(tiny) = 0).
_TINY = torch.finfo(torch.float32).tiny


def entropy_nats(probs: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Entropy over the last dimension, in nats (``out``: a float32 buffer shaped like ``probs`` for the
    temporaries, reused by callers that slice a block).

    A zero probability contributes 0 (0·log 0 = 0), so masked logits and zero-filled attention keys are
    harmless; a NaN anywhere in the row still makes the entropy NaN (clamp and log keep NaN), so a broken
    row can never look confident.
    """
    logs = torch.clamp(probs, min=_TINY, out=out).log_()
    return -torch.mul(probs, logs, out=logs).sum(dim=-1)  # what vecdot computes, without a new product
