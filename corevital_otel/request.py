"""What a generate() call asked for, and what it returned: parameters, prompt, usage and finish reasons."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from . import speculative
from .families import model_family
from .model_names import ModelNameOption, model_name
from .results import GenerationInfo


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
    decoder_prompt_length: int = 0  # columns of the returned sequences that were not generated
    prompt_shape: tuple[int, int] | None = None  # (batch, positions) of input_ids or inputs_embeds
    custom_stops: bool = False  # a stopping criterion besides EOS and the token limit may end rows early
    speculative_decoding: str | None = None  # assisted / prompt lookup: a step verifies several tokens

    @property
    def batch_size(self) -> int:
        return self.prompt_shape[0] if self.prompt_shape is not None else 1

    def describe(self, layout: Any, options: Any, model: Any) -> GenerationInfo:
        """What plugins are told about this call before its first forward pass."""
        fanout = self.num_beams if self.num_beams > 1 else self.num_return_sequences
        return GenerationInfo(
            model_name=self.model_name,
            model_type=self.model_type,
            family=model_family(self.model_type),
            is_encoder_decoder=self.is_encoder_decoder,
            num_layers=layout.num_layers,
            num_heads=layout.num_heads,
            rows=self.batch_size * fanout,
            num_beams=self.num_beams,
            max_new_tokens=self.max_new_tokens,
            capture_mode=options.capture_mode,
            options=options.plugin_options,
            model=model,
        )


def _eos_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, torch.Tensor):
        return tuple(int(v) for v in value.flatten().tolist())
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)


# The generation settings the span reports or usage/finish reasons depend on.
_SETTINGS = (
    "max_new_tokens",
    "max_length",
    "do_sample",
    "temperature",
    "top_p",
    "top_k",
    "num_beams",
    "num_return_sequences",
    "eos_token_id",
    "pad_token_id",
    "stop_strings",
    *speculative.SETTINGS,
)
# Used only if this transformers does not expose its defaults.
_FALLBACK_DEFAULTS = {"max_length": 20, "do_sample": False, "num_beams": 1, "num_return_sequences": 1}


def _transformers_defaults() -> dict[str, Any]:
    from transformers import GenerationConfig

    defaults = getattr(GenerationConfig, "_get_default_generation_params", None)
    return dict(defaults()) if callable(defaults) else dict(_FALLBACK_DEFAULTS)


def _effective_settings(model: Any, kwargs: dict) -> tuple[dict[str, Any], bool]:
    """The settings generate() will use, and whether ``max_length`` was left at its default.

    Same precedence as transformers 5's ``_prepare_generation_config``: call keywords, then the call's
    ``generation_config``, then the model's, then transformers' defaults. Read attribute by attribute,
    without copying or validating the caller's config: an invalid combination must reach generate(),
    which raises it inside our span.
    """
    sources = (getattr(model, "generation_config", None), kwargs.get("generation_config"))
    settings = {name: value for name, value in _transformers_defaults().items() if name in _SETTINGS}
    default_max_length = kwargs.get("max_length") is None
    for source in sources:
        for name in _SETTINGS:
            value = getattr(source, name, None)
            if value is not None:
                settings[name] = value
        default_max_length = default_max_length and getattr(source, "max_length", None) is None
    settings.update({name: kwargs[name] for name in _SETTINGS if name in kwargs})
    return settings, default_max_length


def _new_token_limit(
    model: Any, settings: dict[str, Any], default_max_length: bool, prompt_length: int | None
) -> int | None:
    """How many tokens generate() may add, resolved as transformers' ``_prepare_generated_length`` does."""
    if settings.get("max_new_tokens") is not None:
        return int(settings["max_new_tokens"])
    max_length = settings.get("max_length")
    if max_length is None or prompt_length is None:
        return None
    if default_max_length:  # transformers then generates max_length new tokens, within the positions
        positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        limit = int(max_length)
        if isinstance(positions, int):
            limit = min(limit, positions - prompt_length)
        return max(limit, 0)
    return max(int(max_length) - prompt_length, 0)


def resolve_request(model: Any, args: tuple, kwargs: dict, name: ModelNameOption = None) -> GenerationRequest:
    """Read the call's effective parameters without touching the caller's objects."""
    input_ids = args[0] if args and isinstance(args[0], torch.Tensor) else kwargs.get("input_ids")
    if input_ids is None and isinstance(kwargs.get("inputs"), torch.Tensor):
        input_ids = kwargs["inputs"]
    if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
        input_ids = None
    embeds = kwargs.get("inputs_embeds")
    prompt = input_ids if input_ids is not None else embeds
    has_prompt = isinstance(prompt, torch.Tensor) and prompt.dim() >= 2
    prompt_shape = (int(prompt.shape[0]), int(prompt.shape[1])) if has_prompt else None
    mask = kwargs.get("attention_mask")
    model_config = getattr(model, "config", None)
    is_encoder_decoder = bool(getattr(model_config, "is_encoder_decoder", False))
    settings, default_max_length = _effective_settings(model, kwargs)
    if is_encoder_decoder:
        # The returned sequences start with the decoder prompt: the start token unless the caller gave one.
        decoder_ids = kwargs.get("decoder_input_ids")
        decoder_prompt = int(decoder_ids.shape[-1]) if isinstance(decoder_ids, torch.Tensor) else 1
        limit_prompt = decoder_prompt
    elif prompt_shape is not None:
        # The returned sequences start with the prompt ids; with inputs_embeds they hold new tokens only.
        decoder_prompt = prompt_shape[1] if input_ids is not None else 0
        limit_prompt = prompt_shape[1]
    else:
        decoder_prompt = limit_prompt = 1  # no prompt: generate() starts from a BOS column
    # Trailing padding without EOS only comes from a stopping criterion that ended a row early.
    custom_stops = bool(settings.get("stop_strings")) or bool(kwargs.get("stopping_criteria"))
    return GenerationRequest(
        model_name=model_name(model, name),
        model_type=str(getattr(model_config, "model_type", "") or "unknown"),
        is_encoder_decoder=is_encoder_decoder,
        input_ids=input_ids,
        attention_mask=mask if isinstance(mask, torch.Tensor) else None,
        max_new_tokens=_new_token_limit(model, settings, default_max_length, limit_prompt),
        do_sample=bool(settings.get("do_sample") or False),
        temperature=settings.get("temperature"),
        top_p=settings.get("top_p"),
        top_k=settings.get("top_k"),
        num_beams=int(settings.get("num_beams") or 1),
        num_return_sequences=int(settings.get("num_return_sequences") or 1),
        eos_token_ids=_eos_ids(settings.get("eos_token_id")),
        pad_token_id=settings.get("pad_token_id"),
        decoder_prompt_length=decoder_prompt,
        prompt_shape=prompt_shape,
        custom_stops=custom_stops,
        speculative_decoding=speculative.speculative_method(kwargs, settings),
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
    """The generated columns of the returned sequences (without the prompt or the decoder start token)."""
    return sequences[:, request.decoder_prompt_length :]


def summarize_completion(request: GenerationRequest, sequences: torch.Tensor | None) -> Completion:
    """Exact token usage and finish reasons, computed on the host once after generate() returned."""
    if request.attention_mask is not None:
        input_tokens = int(request.attention_mask.sum().item())
    elif request.prompt_shape is not None:
        input_tokens = request.prompt_shape[0] * request.prompt_shape[1]
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
        if request.pad_token_id is not None and request.custom_stops:
            # A row a stopping criterion ended early is padded on the right; otherwise a row without
            # EOS ran to the end, and a trailing pad id is a token the model really generated.
            while length and int(row[length - 1]) == request.pad_token_id:
                length -= 1
        lengths.append(length)
        reached_limit = request.max_new_tokens is not None and length >= request.max_new_tokens
        reasons.append("length" if reached_limit else "stop")
    return Completion(lengths, reasons, input_tokens)
