"""Tiny random-weight models of every covered family, built offline from their configs."""

from __future__ import annotations

import torch
import transformers

VOCAB = 96

_COMMON_DECODER = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    ),
    "llama": lambda: transformers.LlamaConfig(**_COMMON_DECODER),
    "mistral": lambda: transformers.MistralConfig(**_COMMON_DECODER, sliding_window=None),
    "qwen2": lambda: transformers.Qwen2Config(**_COMMON_DECODER),
    "mixtral": lambda: transformers.MixtralConfig(
        **_COMMON_DECODER, num_local_experts=4, num_experts_per_tok=2
    ),
    "t5": lambda: transformers.T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
        eos_token_id=1,
        pad_token_id=0,
    ),
    "bart": lambda: transformers.BartConfig(
        vocab_size=VOCAB,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=256,
        forced_eos_token_id=None,
    ),
}

CAUSAL = ("gpt2", "llama", "mistral", "qwen2", "mixtral")
SEQ2SEQ = ("t5", "bart")
FAMILIES = CAUSAL + SEQ2SEQ


def build_model(family: str, seed: int = 0) -> torch.nn.Module:
    """A 2-layer random model of ``family`` in eval mode, deterministic for a given seed."""
    torch.manual_seed(seed)
    config = CONFIGS[family]()
    if family in SEQ2SEQ:
        model = transformers.AutoModelForSeq2SeqLM.from_config(config)
    else:
        model = transformers.AutoModelForCausalLM.from_config(config)
    return model.eval()


def prompt_batch(batch: int = 2, length: int = 6, pad_first: int = 2, seed: int = 1):
    """Random token ids (avoiding special ids 0-2) and a left-padded attention mask."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    if batch > 1 and pad_first:
        mask[1, :pad_first] = 0
        ids[1, :pad_first] = 0
    return ids, mask
