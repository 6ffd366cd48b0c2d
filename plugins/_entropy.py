"""Shannon entropy of probability rows, shared by the logit and attention plugins."""

from __future__ import annotations

import math

import torch

LN2 = math.log(2.0)


def entropy_nats(probs: torch.Tensor, log_probs: torch.Tensor | None = None) -> torch.Tensor:
    """Entropy over the last dimension, in nats; pass ``log_probs`` when they are known more precisely.

    A zero probability contributes 0 (0·log 0 = 0), so masked logits (-inf) and zero-filled attention
    keys are harmless; a NaN anywhere in the row still makes the entropy NaN, so a broken row can never
    look confident.
    """
    if log_probs is None:
        log_probs = probs.log()
    plogp = torch.where(probs == 0, torch.zeros((), device=probs.device), probs * log_probs)
    return -plogp.sum(dim=-1)
