"""The attention weights the capture computes beside the model's kernel: masks, padding and NaN keys."""

from __future__ import annotations

import pytest
import torch

from corevital_otel.capture.attention_math import query_probabilities, staircase_logits


def _reference(query, key, allowed):
    """Softmax over the allowed keys only, computed key by key; zeros for a query with none."""
    rows, heads, queries, dim = query.shape
    out = torch.zeros(rows, heads, queries, key.shape[2])
    for r in range(rows):
        for h in range(heads):
            for q in range(queries):
                keys = allowed[r, 0, q].nonzero().flatten().tolist()
                if keys:
                    scores = torch.stack([query[r, h, q] @ key[r, h, k] / dim**0.5 for k in keys])
                    out[r, h, q, keys] = torch.softmax(scores, dim=0)
    return out


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_blocked_keys_never_reach_the_softmax_even_when_nan(kind):
    """A blocked key holding NaN (a padding position, a key a later step wrote) gets weight 0 and leaves
    the allowed weights exact; a query that may see no key gets zeros, NaN key or not."""
    torch.manual_seed(0)
    query, key = torch.randn(2, 2, 3, 4), torch.randn(2, 2, 5, 4)
    key[0, :, 4] = float("nan")
    key[1, :, 0] = float("nan")
    allowed = torch.ones(2, 1, 3, 5, dtype=torch.bool)
    allowed[0, :, :, 4] = False
    allowed[1, :, :, 0] = False
    allowed[1, :, 2] = False  # row 1's last query sees nothing
    mask = allowed if kind == "bool" else torch.zeros(allowed.shape).masked_fill(~allowed, -3.0e38)
    got = query_probabilities(query, key, mask, None)
    expected = _reference(query, key, allowed)
    assert not got.isnan().any()
    torch.testing.assert_close(got, expected)
    assert (got[1, :, 2] == 0).all()


def test_a_nan_query_is_never_made_to_look_clean():
    query, key = torch.randn(1, 1, 2, 4), torch.randn(1, 1, 3, 4)
    query[0, 0, 1, 0] = float("nan")
    got = query_probabilities(query, key, None, None, is_causal=True)
    assert got[0, 0, 1].isnan().all() and not got[0, 0, 0].isnan().any()


@pytest.mark.parametrize("rows", [1, 2, 5])
def test_staircase_rows_equal_the_general_masked_scoring(rows):
    """Stashed rows of consecutive steps: row i saw the first ``first + i`` keys. Keys written by later
    steps (NaN here) never reach an earlier row."""
    torch.manual_seed(1)
    first = 4
    query, key = torch.randn(2, 4, rows, 8), torch.randn(2, 2, first + rows - 1, 8)  # grouped KV heads
    if rows > 1:
        key[:, :, -1] = float("nan")  # the last key: seen by the last row only, which it makes NaN
    allowed = (torch.arange(first + rows - 1)[None, :] < first + torch.arange(rows)[:, None])[None, None]
    got = torch.softmax(staircase_logits(query, key, first, 0.3, softcap=5.0), dim=-1)
    expected = query_probabilities(query, key, allowed, 0.3, softcap=5.0)
    torch.testing.assert_close(got, expected, equal_nan=True)
    assert not got[:, :, : rows - 1].isnan().any()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_causal_query_never_sees_a_later_non_finite_key(value):
    """Blocked keys are overwritten, not added to: a later position's NaN or +inf key leaves every
    earlier query exact, and only the queries that may see it turn NaN."""
    torch.manual_seed(2)
    query, key = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)
    key[0, :, 2] = value
    got = query_probabilities(query, key, None, None, is_causal=True)
    allowed = (torch.arange(4)[None, :] <= torch.arange(4)[:, None])[None, None]
    clean = _reference(query, key, allowed)
    torch.testing.assert_close(got[:, :, :2], clean[:, :, :2])
    assert got[:, :, 2:].isnan().all()
