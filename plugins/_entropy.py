"""Shannon entropy of probability rows, or of the softmax of logit rows without computing the softmax."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

LN2 = math.log(2.0)
LOG2E = 1.0 / LN2
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


class SoftmaxEntropy(NamedTuple):
    """What :func:`softmax_entropy` gives, per row: the entropy in bits, the softmax's normaliser ``S``
    after the shift and its log2, and the shifted logits in bits (``d``, a row's largest is 0)."""

    bits: torch.Tensor
    total: torch.Tensor
    log_total: torch.Tensor
    shifted: torch.Tensor


def softmax_entropy(
    logits: torch.Tensor, largest: torch.Tensor, scratch: tuple[torch.Tensor | None, torch.Tensor | None]
) -> SoftmaxEntropy:
    """Entropy of ``softmax(logits)`` over the last dimension, from ``largest`` (the rows' largest logits,
    ``(..., 1)``), in a few passes in base 2 and with no log per value (torch's exp2 on the CPU costs about
    a third of its exp, and a log more than either): ``d = (z - m) / ln 2``, ``e = 2^d``, ``S = sum(e)``;
    with ``p = e / S``, the entropy is ``log2 S - sum(e * d) / S`` bits, ``log2 p_i = d_i - log2 S`` and the
    largest probability is ``1 / S``.

    A masked logit (-inf, or the lowest float, whose shift may overflow to -inf) has ``e = 0`` and adds
    nothing (its ``0 * -inf`` is left out of the sum); a NaN or +inf logit makes ``S``, and so the row's
    entropy, NaN. ``scratch``: float32 tensors shaped like ``logits`` for the shifted logits and the
    powers (None: new ones); the first may be ``logits`` itself, which is then overwritten.
    """
    shift_buffer, power_buffer = scratch
    shifted = torch.sub(logits, largest, out=shift_buffer).mul_(LOG2E)
    powers = torch.exp2(shifted, out=power_buffer)
    total = powers.sum(dim=-1)
    log_total = total.log2()
    # sum(e * d), the product written over the powers (read no more); nansum leaves out a masked logit's
    # 0 * -inf, and any other NaN there already made ``total`` NaN.
    spread = powers.mul_(shifted).nansum(dim=-1)
    return SoftmaxEntropy(log_total - spread / total, total, log_total, shifted)
