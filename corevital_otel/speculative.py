"""Speculative (assisted) decoding: why a span's step count can be lower than its generated tokens.

With an assistant model, prompt lookup or early-exit self-speculation, the target model verifies several
candidate tokens in one forward pass. CoreVital's steps are the target model's forward passes, so
``corevital.steps.count`` is then at most ``gen_ai.usage.output_tokens``; the span names the method in
``corevital.request.speculative_decoding``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ATTRIBUTE = "corevital.request.speculative_decoding"
# generate() setting (keyword or generation config) -> the method it switches on
SETTINGS = ("assistant_early_exit", "prompt_lookup_num_tokens")


def speculative_method(kwargs: Mapping[str, Any], settings: Mapping[str, Any]) -> str | None:
    """``assistant_early_exit``, ``prompt_lookup`` or ``assistant_model`` (transformers' order of
    precedence in ``_get_candidate_generator``), or None for token-by-token decoding."""
    if settings.get("assistant_early_exit") is not None:
        return "assistant_early_exit"
    if settings.get("prompt_lookup_num_tokens") is not None:
        return "prompt_lookup"
    if kwargs.get("assistant_model") is not None:
        return "assistant_model"
    return None
