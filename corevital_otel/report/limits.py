"""Refuse a request the model cannot serve before generating, with one line that says why.

A GPT-2-style model has a fixed number of positions; asking for more tokens than fit ends, deep inside
the model, in an IndexError. The commands check first and exit 2 instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def position_limit(model: Any) -> int | None:
    """How many positions the decoder can attend over, when its config fixes it (None: no fixed limit)."""
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def token_budget_problem(
    model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int
) -> str | None:
    """None when every prompt plus ``max_new_tokens`` fits the model's positions, else the reason."""
    limit = position_limit(model)
    if limit is None:
        return None
    if getattr(model.config, "is_encoder_decoder", False):
        longest, used = 0, 1  # the decoder starts from one start token; the prompt goes to the encoder
    else:
        longest = max((len(tokenizer(text)["input_ids"]) for text in prompts), default=0)
        used = longest
    if used + max_new_tokens <= limit:
        return None
    room = max(limit - used, 0)
    prompt = f"the longest prompt ({longest} tokens) plus " if longest else ""
    return (
        f"--max-new-tokens {max_new_tokens}: {prompt}{max_new_tokens} new tokens exceed the model's "
        f"{limit} positions; use at most {room}"
    )
