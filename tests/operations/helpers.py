"""A word-level tokenizer with punctuation and refusal words, and a helper to script whole sequences."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transformers import PreTrainedTokenizerFast

from tests.core.helpers import scripted
from tests.support.tiny_models import VOCAB

# Ids 0-2 are the tiny models' pad/bos/eos (llama, gpt2); these words follow, the rest are w<id>.
WORDS = (".", "I", "cannot", "help", "with", "that", "{", "}", '"')
EOS = 2


def word_tokenizer() -> PreTrainedTokenizerFast:
    """Token ``i`` decodes to ``WORDS[i - 3]`` or ``w<i>``; words are joined by spaces."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocabulary = ["<pad>", "<s>", "</s>", *WORDS] + [f"w{index}" for index in range(3 + len(WORDS), VOCAB)]
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(vocabulary)}, unk_token="w20"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="w20"
    )


def ids(text: str) -> list[int]:
    """Token ids of space-separated words (``</s>`` is EOS)."""
    return word_tokenizer()(text, add_special_tokens=False)["input_ids"]


def script_rows(prompt_width: int, rows: Mapping[int, Sequence[int]]) -> Any:
    """A logits processor list that makes row ``r`` generate ``rows[r]`` token by token (EOS never
    chosen otherwise, so a row without EOS runs to the token limit)."""
    forced = {(row, step): token for row, tokens in rows.items() for step, token in enumerate(tokens)}
    return scripted(prompt_width, forced, banned=(EOS,))
