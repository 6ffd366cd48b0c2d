"""Message content capture, off by default, following OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT.

``NO_CONTENT`` (default): no prompt, completion or token text leaves the process. ``SPAN_ONLY``: the
prompt and completion as ``gen_ai.input.messages`` / ``gen_ai.output.messages`` span attributes.
``EVENT_ONLY``: the same in a ``gen_ai.client.inference.operation.details`` span event, plus each
``corevital.step`` event's token text. ``SPAN_AND_EVENT``: both. The legacy boolean values ``true`` /
``false`` mean ``SPAN_AND_EVENT`` / ``NO_CONTENT``.

generate() only sees token ids, so text needs the model's tokenizer: the one passed as
``generate(tokenizer=...)``, a streamer's, the tokenizer of a pipeline built around the model, or one
registered with :func:`register_tokenizer`.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.semconv._incubating.attributes.gen_ai_attributes import (
    GEN_AI_INPUT_MESSAGES as INPUT_MESSAGES,
)
from opentelemetry.semconv._incubating.attributes.gen_ai_attributes import (
    GEN_AI_OUTPUT_MESSAGES as OUTPUT_MESSAGES,
)

if TYPE_CHECKING:
    import torch

DETAILS_EVENT = "gen_ai.client.inference.operation.details"

_tokenizers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def in_spans(mode: str) -> bool:
    return mode in ("SPAN_ONLY", "SPAN_AND_EVENT")


def in_events(mode: str) -> bool:
    return mode in ("EVENT_ONLY", "SPAN_AND_EVENT")


def register_tokenizer(model: Any, tokenizer: Any) -> None:
    """Tell corevital_otel which tokenizer turns this model's ids into text: for content capture, and for
    plugins that classify ids without exporting text (the risk plugin's line ends, the outcome checks)."""
    _tokenizers[model] = tokenizer


def find_tokenizer(model: Any, kwargs: Mapping[str, Any]) -> Any:
    tokenizer = kwargs.get("tokenizer")
    if tokenizer is None:
        tokenizer = getattr(kwargs.get("streamer"), "tokenizer", None)
    if tokenizer is None:
        try:
            tokenizer = _tokenizers.get(model)
        except TypeError:  # not weak-referenceable
            tokenizer = None
    return tokenizer


def _decode(tokenizer: Any, ids: torch.Tensor) -> str:
    return str(tokenizer.decode(ids.tolist(), skip_special_tokens=True))


def input_messages(tokenizer: Any, input_ids: torch.Tensor, mask: torch.Tensor | None) -> str:
    """One user message per prompt row, padding removed, as the GenAI conventions' JSON."""
    messages = []
    for row in range(input_ids.shape[0]):
        ids = input_ids[row] if mask is None else input_ids[row][mask[row].bool()]
        messages.append({"role": "user", "parts": [{"type": "text", "content": _decode(tokenizer, ids)}]})
    return json.dumps(messages, ensure_ascii=False)


def output_messages(
    tokenizer: Any, generated: torch.Tensor, lengths: Sequence[int], finish_reasons: Sequence[str]
) -> str:
    """One assistant message per returned sequence, cut at its own length (no padding)."""
    messages = []
    for row in range(generated.shape[0]):
        text = _decode(tokenizer, generated[row, : lengths[row]])
        message: dict[str, Any] = {"role": "assistant", "parts": [{"type": "text", "content": text}]}
        if row < len(finish_reasons):
            message["finish_reason"] = finish_reasons[row]
        messages.append(message)
    return json.dumps(messages, ensure_ascii=False)


def token_texts(tokenizer: Any, tokens: Sequence[int]) -> tuple[str, ...]:
    """Text of single tokens (one per row); unknown tokens (-1) give ""."""
    return tuple("" if token < 0 else str(tokenizer.decode([token])) for token in tokens)


def span_content(
    span: Any, mode: str, tokenizer: Any, request: Any, completion: Any, generated: torch.Tensor | None
) -> tuple[dict[str, Any], str | None]:
    """The prompt/completion messages for the span's attributes when ``mode`` puts them there (they go to
    the details event when it asks for events), and what could not be captured, if anything."""
    if mode == "NO_CONTENT":
        return {}, None
    if tokenizer is None:
        return {}, "content: no tokenizer known (pass tokenizer= or use register_tokenizer)"
    messages: dict[str, Any] = {}
    if request.input_ids is not None:
        messages[INPUT_MESSAGES] = input_messages(tokenizer, request.input_ids, request.attention_mask)
    if generated is not None:
        messages[OUTPUT_MESSAGES] = output_messages(
            tokenizer, generated, completion.output_tokens, completion.finish_reasons
        )
    if in_events(mode) and messages:
        span.add_event(DETAILS_EVENT, messages)
    return (messages if in_spans(mode) else {}), None
