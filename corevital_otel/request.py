"""What a generate() call asked for, and what it returned: parameters, prompt, usage and finish reasons."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

# generate() keyword -> GenAI request attribute
_REQUEST_ATTRIBUTES = {
    "max_new_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
}


@dataclass
class GenerationRequest:
    """The resolved request: the model's generation config with the call's overrides applied."""

    model_name: str
    model_type: str
    is_encoder_decoder: bool
    input_ids: torch.Tensor | None
    attention_mask: torch.Tensor | None
    max_new_tokens: int | None
    do_sample: bool
    temperature: float | None
    top_p: float | None
    top_k: int | None
    num_beams: int
    num_return_sequences: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int | None

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0]) if self.input_ids is not None else 1

    @property
    def prompt_length(self) -> int:
        """Columns of the prompt inside the returned sequences (decoder-only models given input_ids)."""
        if self.is_encoder_decoder or self.input_ids is None:
            return 0
        return int(self.input_ids.shape[1])

    def span_attributes(self) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "text_completion",
            "gen_ai.provider.name": "huggingface",
            "gen_ai.request.model": self.model_name,
            "gen_ai.request.choice.count": self.num_return_sequences,
            "corevital.request.num_beams": self.num_beams,
            "corevital.request.do_sample": self.do_sample,
        }
        if self.max_new_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = self.max_new_tokens
        # Sampling parameters only mean something when the call samples.
        if self.do_sample:
            for name, value in (
                ("temperature", self.temperature),
                ("top_p", self.top_p),
                ("top_k", self.top_k),
            ):
                if value is not None:
                    attributes[_REQUEST_ATTRIBUTES[name]] = value
        return attributes


def _eos_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, torch.Tensor):
        return tuple(int(v) for v in value.flatten().tolist())
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)


def _model_name(model: Any) -> str:
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", "") or getattr(config, "name_or_path", "")
    return str(name or getattr(config, "model_type", "") or type(model).__name__)


def resolve_request(model: Any, args: tuple, kwargs: dict) -> GenerationRequest:
    """Read the call's effective parameters without touching the caller's objects."""
    base = kwargs.get("generation_config") or getattr(model, "generation_config", None)
    config = copy.deepcopy(base) if base is not None else None
    if config is not None:
        overrides = {k: v for k, v in kwargs.items() if hasattr(config, k) and k != "generation_config"}
        config.update(**overrides)
    input_ids = args[0] if args and isinstance(args[0], torch.Tensor) else kwargs.get("input_ids")
    if input_ids is None and isinstance(kwargs.get("inputs"), torch.Tensor):
        input_ids = kwargs["inputs"]
    if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
        input_ids = None
    mask = kwargs.get("attention_mask")
    model_config = getattr(model, "config", None)

    def setting(name: str, default: Any = None) -> Any:
        value = getattr(config, name, None) if config is not None else None
        return default if value is None else value

    max_new_tokens = setting("max_new_tokens")
    if max_new_tokens is None and setting("max_length") is not None:
        prompt = input_ids.shape[1] if input_ids is not None and not model_config.is_encoder_decoder else 0
        max_new_tokens = max(int(setting("max_length")) - prompt, 0)
    return GenerationRequest(
        model_name=_model_name(model),
        model_type=str(getattr(model_config, "model_type", "") or "unknown"),
        is_encoder_decoder=bool(getattr(model_config, "is_encoder_decoder", False)),
        input_ids=input_ids,
        attention_mask=mask if isinstance(mask, torch.Tensor) else None,
        max_new_tokens=int(max_new_tokens) if max_new_tokens is not None else None,
        do_sample=bool(setting("do_sample", False)),
        temperature=setting("temperature"),
        top_p=setting("top_p"),
        top_k=setting("top_k"),
        num_beams=int(setting("num_beams", 1)),
        num_return_sequences=int(setting("num_return_sequences", 1)),
        eos_token_ids=_eos_ids(setting("eos_token_id")),
        pad_token_id=setting("pad_token_id"),
    )


@dataclass
class Completion:
    """Per returned sequence: generated token count (padding after EOS excluded) and finish reason."""

    output_tokens: list[int]
    finish_reasons: list[str]
    input_tokens: int

    @property
    def total_output_tokens(self) -> int:
        return sum(self.output_tokens)


def returned_sequences(output: Any) -> torch.Tensor | None:
    sequences = getattr(output, "sequences", output)
    return sequences if isinstance(sequences, torch.Tensor) and sequences.dim() == 2 else None


def generated_part(request: GenerationRequest, sequences: torch.Tensor) -> torch.Tensor:
    """The generated columns of the returned sequences (seq2seq drops the decoder start token)."""
    start = 1 if request.is_encoder_decoder else request.prompt_length
    return sequences[:, start:]


def summarize_completion(request: GenerationRequest, sequences: torch.Tensor | None) -> Completion:
    """Exact token usage and finish reasons, computed on the host once after generate() returned."""
    if request.attention_mask is not None:
        input_tokens = int(request.attention_mask.sum().item())
    elif request.input_ids is not None:
        input_tokens = int(request.input_ids.numel())
    else:
        input_tokens = 0
    if sequences is None:
        return Completion([], [], input_tokens)
    generated = generated_part(request, sequences).cpu()
    lengths, reasons = [], []
    eos = torch.tensor(request.eos_token_ids or (-1,), dtype=generated.dtype)
    for row in generated:
        hits = torch.isin(row, eos).nonzero()
        if len(hits):
            lengths.append(int(hits[0]) + 1)
            reasons.append("stop")
            continue
        length = len(row)
        if request.pad_token_id is not None:
            # Rows shorter than the batch's longest are padded on the right.
            while length and int(row[length - 1]) == request.pad_token_id:
                length -= 1
        lengths.append(length)
        reached_limit = request.max_new_tokens is not None and length >= request.max_new_tokens
        reasons.append("length" if reached_limit else "stop")
    return Completion(lengths, reasons, input_tokens)
