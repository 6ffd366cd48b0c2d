"""What the capture hands to plugins: blocks of generated steps, one step's view of them, and the prompt."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .attention_math import query_probabilities


class _ComputedOnRead:
    """A record field that may hold a stand-in for its value (attention logits for the weights), so the
    value is computed only if something reads it: ``compute(record, held)`` returns what to read, and
    that result replaces ``held``, so later reads get it as it is."""

    def __init__(self, compute: Callable[[Any, Any], Any]) -> None:
        self.compute = compute

    def __set_name__(self, owner: type, name: str) -> None:
        self.private = f"_{name}"

    def __get__(self, record: Any, owner: type | None = None) -> Any:
        if record is None:
            raise AttributeError(self.private)  # the dataclass field has no default
        held = record.__dict__[self.private]
        value = self.compute(record, held)
        if value is not held:
            record.__dict__[self.private] = value
        return value

    def __set__(self, record: Any, value: Any) -> None:
        record.__dict__[self.private] = value


def _softmax_of_logits(record: Any, weights: torch.Tensor | None) -> torch.Tensor | None:
    """``attention``: when the capture handed the record its attention logits instead, their softmax (the
    built-in plugins read the logits and never make it)."""
    if weights is None and record.attention_logits is not None:
        return torch.softmax(record.attention_logits, dim=-1)
    return weights


@dataclass
class StepCapture:
    """The model's internals for one generated token, still on the model's device.

    - ``logits``: ``(rows, vocab)`` raw next-token logits of the model (before any logits processor,
      temperature, top-k or top-p), in float32.
    - ``hidden``: ``(layers, rows, hidden)`` output of each decoder layer at the new position. This is the
      *pre-final-norm* residual stream (transformers' ``output_hidden_states[-1]`` is post-norm).
    - ``attention``: ``(layers, rows, heads, keys)`` softmax weights of the new query over all keys, per
      head; keys beyond a layer's own key count are zero-filled.
    - ``attention_keys``: ``(layers, rows)`` number of keys each row may attend to (padding excluded).
    - ``chosen``: ``(rows,)`` token id chosen at this step, known one step later; None when unknown.
    - ``attention_logits``: ``(layers, rows, heads, keys)``, the scores ``attention`` is the softmax of,
      when the capture handed those (see :class:`StepBlock`); ``attention`` is then computed on first read.

    A field is None when its capture is switched off or unavailable for this model.
    """

    index: int
    rows: int
    logits: torch.Tensor | None
    hidden: torch.Tensor | None
    attention: torch.Tensor | None = _ComputedOnRead(_softmax_of_logits)  # type: ignore[assignment]
    attention_keys: torch.Tensor | None
    chosen: torch.Tensor | None
    attention_logits: torch.Tensor | None = None
    # Scratch shared by the plugins for this one step (e.g. one log-softmax that several plugins read),
    # so two plugins never compute the same thing twice. Gone with the step.
    memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


class PerStep:
    """A block field still held as one tensor per step (references the capture kept, not copies), stacked
    into one float32 tensor only when read; ``check`` runs on the parts first (it raises when one of them
    was changed in place since it was kept)."""

    def __init__(self, parts: Sequence[torch.Tensor], check: Callable[[Sequence[torch.Tensor]], None]):
        self.parts = parts
        self.check = check

    @property
    def step_shape(self) -> torch.Size:
        return self.parts[0].shape

    @property
    def device(self) -> torch.device:
        return self.parts[0].device

    def stack(self, window: slice | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """The parts (of ``window``) stacked as float32, into ``out`` when given (a reusable buffer)."""
        parts = list(self.parts if window is None else self.parts[window])
        self.check(parts)
        if out is None:
            return torch.stack(parts).float()
        if parts[0].dtype == torch.float32:
            return torch.stack(parts, out=out)
        return out.copy_(torch.stack(parts))

    def window(self, window: slice) -> PerStep:
        return PerStep(self.parts[window], self.check)


def _stacked(block: Any, value: torch.Tensor | PerStep | None) -> torch.Tensor | None:
    """A :class:`StepBlock` field that may be set to a :class:`PerStep`: stacked once, when first read."""
    return value.stack() if isinstance(value, PerStep) else value


@dataclass
class StepBlock:
    """Consecutive generated steps ``start .. start + steps - 1``, still on the model's device.

    Each field is the matching :class:`StepCapture` field with a leading steps dimension:

    - ``logits`` ``(steps, rows, vocab)``, ``hidden`` ``(steps, layers, rows, hidden)``,
      ``attention`` ``(steps, layers, rows, heads, keys)`` (zero beyond each step's own keys),
      ``attention_keys`` ``(steps, layers, rows)``;
    - ``chosen`` ``(steps, rows)`` token ids, ``-1`` where the chosen token is not known
      (``chosen_known[i]`` says whether step ``start + i`` has them);
    - ``attention_logits`` ``(steps, layers, rows, heads, keys)``: the scores the weights are the softmax
      of (q·kᵀ·scale, in nats; the lowest float32 where a row may not attend, and every row may attend
      to some key), when the capture scored the block's query rows at once (None otherwise).
      ``attention`` is then computed from them on first read; :attr:`has_attention` says whether there
      is attention without computing it.

    The capture stashes each step's raw values as the model runs and hands them over in blocks (every few
    steps and at the end; every step when something reads step values live), so a plugin computes its
    step series with a few vectorised operations per block instead of per token.
    """

    start: int
    steps: int
    rows: int
    # The capture hands the logits over as per-step references (a :class:`PerStep`), stacked on first read:
    # the built-in logit pass reads them a few steps at a time (``logits_window``) and never stacks them.
    logits: torch.Tensor | None = _ComputedOnRead(_stacked)  # type: ignore[assignment]
    hidden: torch.Tensor | None
    attention: torch.Tensor | None = _ComputedOnRead(_softmax_of_logits)  # type: ignore[assignment]
    attention_keys: torch.Tensor | None
    chosen: torch.Tensor | None
    chosen_known: tuple[bool, ...] = ()
    attention_logits: torch.Tensor | None = None
    # Scratch shared by the plugins for this block (e.g. one log-softmax that several plugins read).
    memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def has_logits(self) -> bool:
        """Whether the block holds logits (without stacking them)."""
        return self.__dict__["_logits"] is not None

    @property
    def has_attention(self) -> bool:
        """Whether the block holds attention (weights, or the logits they are computed from)."""
        return self.held_attention() is not None

    def held_attention(self) -> torch.Tensor | None:
        """The attention tensor the block was handed, its logits or its weights, computing nothing."""
        return self.attention_logits if self.attention_logits is not None else self.__dict__["_attention"]

    @property
    def device(self) -> torch.device | None:
        """The device the block's tensors are on (None when it holds none)."""
        logits = self.__dict__["_logits"]
        if logits is not None:
            return logits.device
        held = (self.hidden, self.held_attention(), self.chosen)
        return next((tensor.device for tensor in held if tensor is not None), None)

    @property
    def logit_step_shape(self) -> torch.Size | None:
        """``(rows, vocab)``: one step's logits, without stacking them; None when there are none."""
        value = self.__dict__["_logits"]
        return None if value is None else value.step_shape if isinstance(value, PerStep) else value.shape[1:]

    def logits_window(self, window: slice, out: torch.Tensor | None = None) -> torch.Tensor | None:
        """``logits[window]`` float32, stacking only those steps (into ``out``, a float32 buffer of that
        shape, when given) while the block is still per step; a view once it was stacked whole."""
        value = self.__dict__["_logits"]
        if isinstance(value, PerStep):
            return value.stack(window, out)
        return None if value is None else value[window].float()

    def step(self, offset: int) -> StepCapture:
        """Step ``start + offset`` as a :class:`StepCapture` (views, no copies)."""

        def pick(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor[offset]

        known = self.chosen is not None and offset < len(self.chosen_known) and self.chosen_known[offset]
        return StepCapture(
            index=self.start + offset,
            rows=self.rows,
            logits=pick(self.logits),
            hidden=pick(self.hidden),
            attention=pick(self.__dict__["_attention"]),  # the block's weights only if already computed
            attention_keys=pick(self.attention_keys),
            chosen=pick(self.chosen) if known else None,
            attention_logits=pick(self.attention_logits),
        )

    @classmethod
    def of_steps(cls, steps: list[StepCapture]) -> StepBlock:
        """Stack consecutive :class:`StepCapture` records into a block (for tests and adapters)."""
        first = steps[0]

        def stack(name: str) -> torch.Tensor | None:
            values = [getattr(step, name) for step in steps]
            return None if any(value is None for value in values) else torch.stack(values)

        attention_logits = stack("attention_logits")  # then the weights are computed only when read
        known = tuple(step.chosen is not None for step in steps)
        chosen = None
        if any(known):
            reference = next(step.chosen for step in steps if step.chosen is not None)
            chosen = torch.stack(
                [
                    step.chosen.long() if step.chosen is not None else torch.full_like(reference.long(), -1)
                    for step in steps
                ]
            )
        return cls(
            start=first.index,
            steps=len(steps),
            rows=first.rows,
            logits=stack("logits"),
            hidden=stack("hidden"),
            attention=None if attention_logits is not None else stack("attention"),
            attention_keys=stack("attention_keys"),
            chosen=chosen,
            chosen_known=known,
            attention_logits=attention_logits,
        )


@dataclass
class AttentionInputs:
    """The query/key tensors one attention layer saw, kept so weights can be computed on demand."""

    query: torch.Tensor
    key: torch.Tensor
    mask: torch.Tensor | None
    scaling: float | None
    position_bias: torch.Tensor | None = None
    softcap: float | None = None
    is_causal: bool = False


@dataclass
class PromptCapture:
    """The prompt as the model processed it (prefill pass, or the encoder of a seq2seq model).

    - ``input_ids`` ``(batch, prompt_len)`` and ``attention_mask`` (1 = real token, None = no padding).
    - ``hidden_states``: per layer, ``(rows, prompt_len, hidden)`` layer outputs (pre-final-norm).
    - ``final_hidden``: ``(rows, prompt_len, hidden)`` after the final norm, or None.
    - ``attention_weights(layer, queries)``: softmax weights ``(rows, heads, len(queries), keys)``
      computed on demand from the layer's own query/key tensors; pass a slice of query positions to
      bound memory for long prompts.
    - ``position_logits(positions)``: raw logits ``(rows, len(positions), vocab)`` predicting the token
      after each prompt position (causal LMs only), from the output embeddings; None if unavailable.

    Detailed fields are None when prompt capture is off or the prompt is longer than the configured limit.
    """

    input_ids: torch.Tensor | None
    attention_mask: torch.Tensor | None
    is_encoder: bool
    hidden_states: list[torch.Tensor] | None = None
    final_hidden: torch.Tensor | None = None
    attention_inputs: dict[int, AttentionInputs] = field(default_factory=dict)
    output_embeddings: nn.Module | None = None

    @property
    def num_layers(self) -> int:
        return len(self.hidden_states or ())

    def attention_weights(self, layer: int, queries: slice | None = None) -> torch.Tensor | None:
        inputs = self.attention_inputs.get(layer)
        if inputs is None:
            return None
        return query_probabilities(
            inputs.query,
            inputs.key,
            inputs.mask,
            inputs.scaling,
            inputs.position_bias,
            inputs.softcap,
            queries,
            inputs.is_causal,
        )

    def position_logits(self, positions: slice | None = None) -> torch.Tensor | None:
        if self.final_hidden is None or self.output_embeddings is None or self.is_encoder:
            return None
        hidden = self.final_hidden if positions is None else self.final_hidden[:, positions]
        output: Any = self.output_embeddings(hidden)
        return output.float()
