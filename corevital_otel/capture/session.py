"""Capture for one generate() call: hooks in, one StepCapture per generated token, hooks out.

Step ``s`` is the forward pass that produced the logits for generated token ``s`` (step 0 is the prefill
pass, or the first decoder pass of a seq2seq model). The token chosen at step ``s`` only appears as the
input of step ``s + 1`` (or in the returned sequences), so each step is handed on one forward pass late,
complete with its chosen token.

Every hook body is guarded: a failure in capture is recorded and that capture kind switched off for the
rest of the call; it never reaches the caller's generate().
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from .active import ACTIVE_CAPTURE
from .attention import new_query_probabilities
from .layers import ModelLayout
from .records import AttentionInputs, PromptCapture, StepCapture

logger = logging.getLogger(__name__)

# Hooks are added to and removed from a model that other threads may be running. torch numbers hook
# handles from a shared, unlocked counter: concurrent registrations could get the same id and
# overwrite each other's hook. Every registration and removal of ours goes through this lock.
_HOOKS_LOCK = threading.Lock()


@dataclass(frozen=True)
class CaptureSwitches:
    logits: bool = True
    hidden_states: bool = True
    attention: bool = True
    prompt: bool = True
    prompt_max_tokens: int = 1024


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _stack_padded(rows: list[torch.Tensor]) -> torch.Tensor:
    """Stack per-layer ``(rows, heads, keys)`` tensors, zero-padding layers that saw fewer keys."""
    widest = max(row.shape[-1] for row in rows)
    if all(row.shape[-1] == widest for row in rows):
        return torch.stack(rows)
    return torch.stack([functional.pad(row, (0, widest - row.shape[-1])) for row in rows])


class CaptureSession:
    """Hooks one model for one generate() call and turns its forward passes into StepCaptures."""

    def __init__(
        self,
        model: nn.Module,
        layout: ModelLayout,
        switches: CaptureSwitches,
        deliver_step: Callable[[StepCapture], None],
        is_encoder_decoder: bool,
        logged_failures: set[str] | None = None,
    ) -> None:
        self.model = model
        # Capture kinds whose failure was already logged: shared by the calls of one instrumentation,
        # so a failure that repeats on every generate() is logged once, not once per call.
        self._logged_failures = set() if logged_failures is None else logged_failures
        self.layout = layout
        self.switches = switches
        self.deliver_step = deliver_step
        self.is_encoder_decoder = is_encoder_decoder
        self.started = time.perf_counter()
        self.step_seconds: list[float] = []
        self.failures: dict[str, str] = {}
        self.steps_seen = 0
        self.attention_steps = 0  # steps with every layer's attention row: 0 means the kernel bypassed us
        self.cache: Any = None  # the last ``past_key_values`` the model's forward got: a reference, no copy
        self._pending: StepCapture | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._hidden: list[torch.Tensor | None] = [None] * layout.num_layers
        self._attention: list[torch.Tensor | None] = [None] * layout.num_layers
        self._attention_keys: list[torch.Tensor | None] = [None] * layout.num_layers
        # Prompt internals, referenced (not copied) while the prefill/encoder pass runs, released after use.
        self.prompt_hidden: dict[int, torch.Tensor] = {}
        self.prompt_attention: dict[int, AttentionInputs] = {}
        self.prompt_final_hidden: torch.Tensor | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def attach(self) -> None:
        with _HOOKS_LOCK:
            self._handles.append(self.model.register_forward_pre_hook(self._before_forward, with_kwargs=True))
            self._handles.append(self.model.register_forward_hook(self._after_forward, with_kwargs=True))
            if self.switches.hidden_states:
                for index, layer in enumerate(self.layout.layers):
                    self._handles.append(layer.register_forward_hook(partial(self._after_layer, index)))
            if self.switches.prompt:
                self._attach_prompt_hooks()

    def _attach_prompt_hooks(self) -> None:
        layout = self.layout
        if self.is_encoder_decoder:
            for index, layer in enumerate(layout.encoder_layers):
                self._handles.append(layer.register_forward_hook(partial(self._after_prompt_layer, index)))
            if layout.encoder_layers:
                encoder_root = self.model.get_encoder()
                self._handles.append(encoder_root.register_forward_hook(self._after_prompt_root))
        elif layout.decoder_root is not None:
            self._handles.append(layout.decoder_root.register_forward_hook(self._after_prompt_root))

    def _in_prefill(self) -> bool:
        return not self.is_encoder_decoder and self.steps_seen == 0

    def _prompt_fits(self, length: int) -> bool:
        return self.switches.prompt and length <= self.switches.prompt_max_tokens

    def _after_prompt_layer(self, index: int, module: nn.Module, args: tuple, output: Any) -> None:
        if not self._is_mine():
            return
        try:
            hidden = _first_tensor(output)
            if hidden is not None and hidden.dim() == 3 and self._prompt_fits(hidden.shape[1]):
                self.prompt_hidden[index] = hidden
        except Exception as error:  # noqa: BLE001 - a hook error would break the model's forward
            self.fail("prompt", error)

    def _after_prompt_root(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not self._is_mine() or not (self.is_encoder_decoder or self._in_prefill()):
            return
        try:
            hidden = getattr(output, "last_hidden_state", None)
            if hidden is None:
                hidden = _first_tensor(output)
            if hidden is not None and hidden.dim() == 3 and self._prompt_fits(hidden.shape[1]):
                self.prompt_final_hidden = hidden
        except Exception as error:  # noqa: BLE001
            self.fail("prompt", error)

    def prompt_capture(
        self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None
    ) -> PromptCapture:
        """What was kept of the prompt pass; call ``release_prompt`` once plugins have read it."""
        layers = self.layout.encoder_layers if self.is_encoder_decoder else self.layout.layers
        complete = bool(layers) and len(self.prompt_hidden) == len(layers)
        get_output_embeddings = getattr(self.model, "get_output_embeddings", None)
        return PromptCapture(
            input_ids=input_ids,
            attention_mask=attention_mask,
            is_encoder=self.is_encoder_decoder,
            hidden_states=[self.prompt_hidden[i] for i in range(len(layers))] if complete else None,
            final_hidden=self.prompt_final_hidden,
            attention_inputs=dict(self.prompt_attention),
            output_embeddings=get_output_embeddings() if callable(get_output_embeddings) else None,
        )

    def release_prompt(self) -> None:
        self.prompt_hidden.clear()
        self.prompt_attention.clear()
        self.prompt_final_hidden = None

    def detach(self) -> None:
        with _HOOKS_LOCK:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()

    def finish(self, final_tokens: torch.Tensor | None) -> None:
        """Deliver the last step, whose chosen token is only known from the returned sequences."""
        if self._pending is not None:
            chosen = (
                final_tokens
                if final_tokens is not None and final_tokens.shape[0] == self._pending.rows
                else None
            )
            self._complete_pending(chosen)

    def fail(self, kind: str, error: BaseException) -> None:
        if kind not in self.failures:
            self.failures[kind] = f"{type(error).__name__}: {error}"
            if kind not in self._logged_failures:
                self._logged_failures.add(kind)
                logger.warning(
                    "corevital capture of %s failed and is off for this generation: %r (logged once)",
                    kind,
                    error,
                )

    def _is_mine(self) -> bool:
        return ACTIVE_CAPTURE.get() is self

    # -- hooks -----------------------------------------------------------------------------------

    # A forward pass in another thread may call these two after this session removed them: torch then
    # no longer knows they take kwargs and calls them without. Such a call is never ours: return.
    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict | None = None) -> None:
        if not self._is_mine() or kwargs is None:
            return
        try:
            cache = kwargs.get("past_key_values")
            if cache is not None:
                self.cache = cache
            if self._pending is not None:
                name = "decoder_input_ids" if self.is_encoder_decoder else "input_ids"
                ids = kwargs.get(name)
                if ids is None and args and not self.is_encoder_decoder:
                    ids = args[0]
                chosen = (
                    ids[:, -1]
                    if isinstance(ids, torch.Tensor) and ids.shape[0] == self._pending.rows
                    else None
                )
                self._complete_pending(chosen)
            self._reset_layer_buffers()
        except Exception as error:  # noqa: BLE001 - capture must never break generation
            self.fail("steps", error)

    def _after_forward(self, module: nn.Module, args: tuple, *kwargs_and_output: Any) -> None:
        if not self._is_mine() or len(kwargs_and_output) != 2:
            return
        output = kwargs_and_output[-1]
        self.step_seconds.append(time.perf_counter() - self.started)
        try:
            logits = getattr(output, "logits", None)
            if logits is None:
                logits = _first_tensor(output)
            if logits is None:
                raise TypeError(f"forward output {type(output).__name__} has no logits")
            last_logits = (
                logits[:, -1, :].float() if self.switches.logits and "logits" not in self.failures else None
            )
            attention = self._collect_attention()
            self.attention_steps += attention is not None
            self._pending = StepCapture(
                index=self.steps_seen,
                rows=int(logits.shape[0]),
                logits=last_logits,
                hidden=self._collect_hidden(),
                attention=attention,
                attention_keys=self._collect_attention_keys(),
                chosen=None,
            )
            self.steps_seen += 1
        except Exception as error:  # noqa: BLE001
            self.fail("steps", error)

    def _after_layer(self, index: int, module: nn.Module, args: tuple, output: Any) -> None:
        if not self._is_mine() or "hidden_states" in self.failures:
            return
        try:
            hidden = _first_tensor(output)
            if hidden is not None and hidden.dim() == 3:
                self._hidden[index] = hidden[:, -1, :]
                if self._in_prefill() and self._prompt_fits(hidden.shape[1]):
                    self.prompt_hidden[index] = hidden
        except Exception as error:  # noqa: BLE001
            self.fail("hidden_states", error)

    def observe_attention(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        mask: torch.Tensor | None,
        kwargs: dict,
    ) -> None:
        """Called by the attention-registry wrapper for every attention call on this thread."""
        if not self.switches.attention or "attention" in self.failures:
            return
        try:
            layer = self.layout.self_attention.get(id(module))
            if layer is None:
                encoder_layer = self.layout.encoder_self_attention.get(id(module))
                if encoder_layer is not None and self._prompt_fits(query.shape[2]):
                    self._keep_prompt_attention(encoder_layer, module, query, key, mask, kwargs, causal=False)
                return
            if self._in_prefill() and self._prompt_fits(query.shape[2]):
                self._keep_prompt_attention(layer, module, query, key, mask, kwargs, causal=True)
            probs, key_counts = new_query_probabilities(
                query,
                key,
                mask,
                kwargs.get("scaling"),
                position_bias=kwargs.get("position_bias"),
                softcap=kwargs.get("softcap"),
            )
            self._attention[layer] = probs
            self._attention_keys[layer] = key_counts
        except Exception as error:  # noqa: BLE001
            self.fail("attention", error)

    def _keep_prompt_attention(
        self,
        layer: int,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        mask: Any,
        kwargs: dict,
        causal: bool,
    ) -> None:
        self.prompt_attention[layer] = AttentionInputs(
            query=query,
            key=key,
            mask=mask if isinstance(mask, torch.Tensor) and mask.dim() == 4 else None,
            scaling=kwargs.get("scaling"),
            position_bias=kwargs.get("position_bias"),
            softcap=kwargs.get("softcap"),
            is_causal=bool(getattr(module, "is_causal", causal)) and causal,
        )

    # -- assembling a step -----------------------------------------------------------------------

    def _reset_layer_buffers(self) -> None:
        for buffer in (self._hidden, self._attention, self._attention_keys):
            for index in range(len(buffer)):
                buffer[index] = None

    def _collect_hidden(self) -> torch.Tensor | None:
        if not self.switches.hidden_states or not self._hidden or any(h is None for h in self._hidden):
            return None
        return torch.stack(self._hidden).float()  # type: ignore[arg-type]

    def _collect_attention(self) -> torch.Tensor | None:
        if not self.switches.attention or not self._attention or any(a is None for a in self._attention):
            return None
        return _stack_padded(self._attention)  # type: ignore[arg-type]

    def _collect_attention_keys(self) -> torch.Tensor | None:
        if not self._attention_keys or any(k is None for k in self._attention_keys):
            return None
        return torch.stack(self._attention_keys)  # type: ignore[arg-type]

    def deliver_pending(self, chosen: torch.Tensor | None) -> StepCapture | None:
        """Hand the pending step on now (a stopping criterion knows its chosen token already)."""
        if not self._is_mine() or self._pending is None:
            return None
        return self._complete_pending(chosen)

    def _complete_pending(self, chosen: torch.Tensor | None) -> StepCapture | None:
        step = self._pending
        self._pending = None
        if step is None:
            return None
        step.chosen = chosen
        self.deliver_step(step)
        return step
