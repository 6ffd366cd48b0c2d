"""Attention weights of chosen query rows, from the query/key tensors a layer's attention function saw.

Pure maths on tensors: no transformers, no capture state. The capture uses it per step (when it must) or
for a block of stashed query rows at once (each row's own keys given by its mask); the prompt capture
uses it on demand.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def _scores(
    query: torch.Tensor, key: torch.Tensor, scaling: float | None, out: torch.Tensor | None = None
) -> torch.Tensor:
    """q·Kᵀ·scale, ``(rows, heads, q_len, keys)`` float32 (into ``out``, contiguous, when given); grouped
    KV heads are read, not repeated."""
    rows, heads, q_len, dim = query.shape
    kv_heads, num_keys = key.shape[1], key.shape[2]
    q = query.float().reshape(rows, kv_heads, heads // kv_heads * q_len, dim)
    grouped = None if out is None else out.view(rows, kv_heads, heads // kv_heads * q_len, num_keys)
    scores = torch.matmul(q, key.float().transpose(-1, -2), out=grouped).view(rows, heads, q_len, num_keys)
    return scores.mul_(scaling if scaling is not None else 1.0 / math.sqrt(dim))  # a fresh tensor: in place


def softmax_in_place(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension written over ``scores`` (a float32 tensor of our own): aten's out=
    form of torch.softmax (same values; a row is read before it is written), so no second tensor that
    size is allocated."""
    return torch._softmax(scores, -1, False, out=scores)


def _block_keys(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``scores`` (in place) where ``allowed`` (a boolean mask broadcastable to them), the lowest float32
    elsewhere, whatever the score there (a blocked key's may be NaN: a padding position, or a key a later
    step wrote, and it must not reach the softmax). What ``masked_fill_(~allowed, lowest)`` gives, in two
    vectorised passes over the scores instead of a masked fill, which is about ten times slower on the CPU:
    NaN becomes +inf (a softmax row with either is all NaN), then the minimum with a cap that is +inf where
    a key is allowed and the lowest float where it is not."""
    inf, lowest = float("inf"), torch.finfo(torch.float32).min
    cap = torch.full(allowed.shape, inf, device=scores.device).masked_fill_(~allowed, lowest)
    scores.nan_to_num_(nan=inf, posinf=inf, neginf=-inf)
    return torch.minimum(scores, cap, out=scores)


def four_d_mask(mask: Any) -> torch.Tensor | None:
    """The attention mask a layer's function got, if it is one the scoring can read: a 4-D tensor
    ``(rows, 1 or heads, queries, keys)``, boolean or additive. None for anything else (no mask, a 2-D
    padding mask some kernels take, a flex ``BlockMask``): the rows are then scored unmasked."""
    return mask if isinstance(mask, torch.Tensor) and mask.dim() == 4 else None


def allowed_keys(mask: torch.Tensor) -> torch.Tensor:
    """Where a boolean (True = may attend) or additive float attention mask lets a query attend."""
    return mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2


def query_probabilities(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    position_bias: torch.Tensor | None = None,
    softcap: float | None = None,
    queries: slice | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """Softmax attention weights ``(rows, heads, q, keys)`` float32 for the selected query positions.

    ``query`` is ``(rows, heads, q_len, dim)``, ``key`` ``(rows, kv_heads, keys, dim)`` with grouped-query
    heads not repeated (query head h reads kv head h // (heads / kv_heads)). ``attention_mask`` is boolean
    (True = may attend) or additive float, broadcastable to ``(rows, heads, q_len, keys)``; when it is None
    and ``is_causal``, query i (aligned to the end of the keys) sees keys up to its own position.
    Keys a query may not attend to get weight exactly 0; a query with no allowed key gets all zeros.
    """
    q_len, num_keys = query.shape[2], key.shape[2]
    selected = range(q_len)[queries] if queries is not None else range(q_len)
    sub_query = query[:, :, selected.start : selected.stop : selected.step]
    scores = _scores(sub_query, key, scaling)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    index = torch.arange(selected.start, selected.stop, selected.step, device=query.device)
    if position_bias is not None:
        scores = scores + position_bias[:, :, index, :num_keys].float()
    if attention_mask is not None:
        mask = (
            attention_mask[:, :, index, :num_keys]
            if attention_mask.shape[2] > 1
            else attention_mask[..., :num_keys]
        )
        allowed = allowed_keys(mask)
        if mask.dtype != torch.bool:
            scores += mask.float()
        _block_keys(scores, allowed)  # overwritten, not added: a blocked key's score may be NaN
    elif is_causal:
        positions = index + (num_keys - q_len)
        allowed = (torch.arange(num_keys, device=query.device)[None, :] <= positions[:, None])[None, None]
        _block_keys(scores, allowed)
        if num_keys >= q_len:  # then every query sees at least the first key: no row to zero
            return softmax_in_place(scores)
    else:
        return softmax_in_place(scores)
    # Blocked keys get exactly 0 from the softmax (exp of the lowest float); a query with no allowed key
    # would get uniform weights over keys it may not see: its row is multiplied by 0 (a small broadcast
    # multiply: a full-size masked fill after the softmax cost a third of the whole scoring on the CPU).
    return softmax_in_place(scores).mul_(allowed.any(dim=-1, keepdim=True))


def staircase_logits(
    query: torch.Tensor,
    key: torch.Tensor,
    first: int,
    scaling: float | None,
    softcap: float | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scores ``(rows, heads, n, keys)`` of ``n`` query rows where row ``i`` may see the first
    ``first + i`` keys and nothing else masks (the rows of consecutive steps of an appending cache), the
    lowest float32 where a row may not attend; written into ``out`` (contiguous, float32) when given.

    Their softmax is what :func:`query_probabilities` gives with that staircase as the mask, but only the
    last ``n - 1`` keys are masked: the keys every row saw need no mask, and a full-size masked fill costs
    as much as the scoring itself on the CPU. Every step is in place on the scores: no other tensor that
    size.
    """
    rows = query.shape[2]
    scores = _scores(query, key, scaling, out)
    if softcap is not None:
        scores.div_(softcap).tanh_().mul_(softcap)
    if rows > 1:  # row i may not see the tail's key j >= i (overwritten, not added: it may be NaN)
        # A masked fill here: the tail is small, and two passes over it cost more than one fill.
        blocked = torch.ones(rows, rows - 1, dtype=torch.bool, device=query.device).triu_()
        scores[..., first:].masked_fill_(blocked, torch.finfo(torch.float32).min)
    return scores


def new_query_probabilities(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    position_bias: torch.Tensor | None = None,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights of the last query, ``(rows, heads, keys)``, and how many keys each row may attend to."""
    num_keys = key.shape[2]
    if attention_mask is None and position_bias is None and softcap is None:
        # The common decode step (no padding): the last query sees every key; skip the general path.
        scores = _scores(query[:, :, -1:, :], key, scaling)[:, :, 0, :]
        key_counts = torch.full((query.shape[0],), num_keys, device=query.device, dtype=torch.int64)
        return torch.softmax(scores, dim=-1), key_counts
    probs = query_probabilities(
        query, key, attention_mask, scaling, position_bias, softcap, queries=slice(-1, None)
    )[:, :, 0, :]
    if attention_mask is None:
        key_counts = torch.full((query.shape[0],), num_keys, device=query.device, dtype=torch.int64)
    else:
        allowed = allowed_keys(attention_mask[:, :1, -1, :num_keys])
        key_counts = allowed.expand(query.shape[0], 1, num_keys)[:, 0, :].sum(dim=-1)
    return probs, key_counts
