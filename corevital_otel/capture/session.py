"""Capture for one generate() call: hooks in, steps stashed as the model runs, blocks handed on, hooks out.

Step ``s`` is the forward pass that produced the logits for generated token ``s`` (step 0 is the prefill
pass, or the first decoder pass of a seq2seq model). The token chosen at step ``s`` only appears as the
input of step ``s + 1`` (or in the returned sequences). The hooks copy each step's new position into a
:class:`~.stash.StepStash`; when it is full (and at the end) it is folded into :class:`StepBlock` records,
complete with their chosen tokens, and handed on. A block is one step long when something reads step
values live (``max_block_steps=1``).

Every hook body is guarded: a failure in capture is recorded and that capture kind switched off for the
rest of the call; it never reaches the caller's generate().
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from . import layer_taps
from .active import ACTIVE_CAPTURE
from .attention_math import four_d_mask
from .heap import release_freed_memory
from .layers import ModelLayout
from .records import AttentionInputs, PromptCapture, StepBlock
from .stash import ReusedBuffer, StepStash, new_layer_keys

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

    @classmethod
    def for_layout(cls, options: Any, layout: Any) -> tuple[CaptureSwitches, list[str]]:
        """What the options ask to capture, less what this model's layout cannot give; and why not."""
        lost = []
        if not layout.layers:
            lost.append("hidden_states and attention: decoder layers not found")
        elif options.capture_attention and not layout.self_attention:
            lost.append("attention: no self-attention module found in the decoder layers")
        switches = cls(
            logits=options.capture_logits,
            hidden_states=options.capture_hidden_states and bool(layout.layers),
            attention=options.capture_attention and bool(layout.self_attention),
            prompt=options.capture_prompt,
            prompt_max_tokens=options.prompt_max_tokens,
        )
        return switches, lost


# Cache layers that only ever append keys (a sliding window's evictions show as a key count that stops
# growing). Any other layer (quantized, indexed, static...) may rewrite keys a stashed row was scored on.
# By class name: transformers moves these classes between modules.
_APPENDING_CACHE_LAYERS = frozenset({"DynamicLayer", "DynamicSlidingWindowLayer"})


def cache_layer_appends(cache: Any, layer: int) -> bool:
    """Whether ``cache``'s self-attention layer ``layer`` keeps earlier keys as they were."""
    self_attention = getattr(cache, "self_attention_cache", cache)  # an encoder-decoder cache's decoder part
    layers = getattr(self_attention, "layers", None)
    if not isinstance(layers, (list, tuple)) or layer >= len(layers):
        return False
    return type(layers[layer]).__name__ in _APPENDING_CACHE_LAYERS


def _host_bytes(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None or tensor.device.type != "cpu" else tensor.numel() * tensor.element_size()


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


class CaptureSession:
    """Hooks one model for one generate() call and turns its forward passes into StepCaptures."""

    def __init__(
        self,
        model: nn.Module,
        layout: ModelLayout,
        switches: CaptureSwitches,
        deliver_block: Callable[[StepBlock], None],
        is_encoder_decoder: bool,
        logged_failures: set[str] | None = None,
        deliver_prompt: Callable[[], None] | None = None,
        max_block_steps: int = 1,
        per_step_attention: bool = False,
    ) -> None:
        self.model = model
        # Capture kinds whose failure was already logged: shared by the calls of one instrumentation,
        # so a failure that repeats on every generate() is logged once, not once per call.
        self._logged_failures = set() if logged_failures is None else logged_failures
        self.layout = layout
        self.switches = switches
        self.deliver_block = deliver_block
        self.deliver_prompt = deliver_prompt
        self.max_block_steps = max(1, max_block_steps)
        # Beam search reorders the cache between steps: each step's attention is scored on its own keys.
        self.per_step_attention = per_step_attention
        self._appending: dict[int, bool] = {}  # per layer: its cache layer appends (decided once)
        self.is_encoder_decoder = is_encoder_decoder
        self.started = time.perf_counter()
        self.step_seconds: list[float] = []
        self.failures: dict[str, str] = {}
        self.steps_seen = 0
        self.attention_steps = 0  # steps with every layer's attention row: 0 means the kernel bypassed us
        self.hidden_steps = 0  # steps with every layer's hidden state: 0 means no layer hook ran
        self.cache: Any = None  # the last ``past_key_values`` the model's forward got: a reference, no copy
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        # id(decoder layer) -> its index: the layers whose class forward reports (layer_taps), and those
        # with a forward hook of ours instead (a tapped class's forward also runs in these: not reported).
        self._tapped: dict[int, int] = {}
        self._hooked: dict[int, int] = {}
        # An attention lookup's arguments -> what the model calls instead during this call (see
        # capture/attention.py and observer_of).
        self.attention_observers: dict[Hashable, Callable[..., Any]] = {}
        self._prompt_root_hook: torch.utils.hooks.RemovableHandle | None = None  # off after the prefill
        self._layer_keys = new_layer_keys(layout.num_layers)
        self._logits_buffer = ReusedBuffer()  # the folds' attention logits, reused block after block
        # The short paths of a decoding step, for layers whose earlier call took the long one (see
        # layer_output, observer_of): id(tapped decoder layer) -> its index, for the whole call;
        # id(attention module) -> its layer's keys, for the current block. Emptied when that kind fails.
        self._hidden_lanes: dict[int, int] = {}
        self._attention_lanes: dict[int, Any] = {}
        self._slot = 0  # the stash slot the running forward pass fills
        self._stash = self._new_stash(0)
        self._prompt_pending = switches.prompt
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
                tapped = {id(layer) for layer in layer_taps.tap(self.layout.layers)}
                for index, layer in enumerate(self.layout.layers):
                    if id(layer) in tapped:
                        self._tapped[id(layer)] = index
                    else:
                        self._hooked[id(layer)] = index
                        self._handles.append(layer.register_forward_hook(self._after_layer))
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
            # Every decoding step would pay torch's hooked call path for it: removed after the prefill.
            self._prompt_root_hook = layout.decoder_root.register_forward_hook(self._after_prompt_root)
            self._handles.append(self._prompt_root_hook)

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
            self._tapped.clear()
            self._hooked.clear()
        self.attention_observers.clear()  # each holds the session: no cycle through them outlives the call

    def finish(self, final_tokens: torch.Tensor | None) -> None:
        """Hand on what is left: the prompt if still pending, then the last block, whose last step's
        chosen token is only known from the returned sequences."""
        try:
            self._prompt_done()
            self._keep_chosen(final_tokens)
            self._flush()
        finally:
            self._stash.release()
            self._logits_buffer.release()

    def _new_stash(self, start: int) -> StepStash:
        return StepStash(
            start, self.layout.num_layers, self.max_block_steps, self._layer_keys, self._logits_buffer
        )

    def _prompt_done(self) -> None:
        if self._prompt_pending:
            self._prompt_pending = False
            if self.deliver_prompt is not None:
                self.deliver_prompt()

    def _flush(self) -> StepBlock | None:
        """Fold the stash into blocks, start a new one, and hand the blocks on; returns the last."""
        stash = self._stash
        if not stash.filled:
            return None
        self._stash = self._new_stash(stash.start + stash.filled)
        self._slot = 0
        self._attention_lanes.clear()  # a new block fits its length to the attention again
        blocks = stash.fold()
        if stash.attention_error is not None:
            self.fail("attention", stash.attention_error)
        if stash.hidden_error is not None:
            self.fail("hidden_states", stash.hidden_error)
        if stash.logits_error is not None:
            self.fail("logits", stash.logits_error)
        if stash.chosen_error is not None:
            self.fail("chosen_tokens", stash.chosen_error)
        self.attention_steps += sum(block.steps for block in blocks if block.has_attention)
        self.hidden_steps += sum(block.steps for block in blocks if block.hidden is not None)
        for block in blocks:
            self.deliver_block(block)
        release_freed_memory(sum(_host_bytes(b.held_attention()) for b in blocks))
        return blocks[-1] if blocks else None

    def _keep_chosen(self, tokens: torch.Tensor | None) -> None:
        if "chosen_tokens" not in self.failures:
            self._stash.put_chosen(tokens)

    def lost_capture(self, steps: int) -> list[str]:
        """What this call's capture lost: hooks that never ran although steps did, and capture failures."""
        lost = []
        if self.switches.attention and steps and not self.attention_steps and not self.failures:
            # Models with their own attention code (e.g. Bloom, Falcon) never call transformers' registry;
            # a compiled forward looked the attention function up once, while it was traced.
            lost.append(
                "attention: no attention call went through transformers' AttentionInterface"
                " (the model's own attention code, or a compiled forward)"
            )
        if self.switches.hidden_states and steps and not self.hidden_steps and not self.failures:
            lost.append("hidden_states: no decoder-layer hook ran (a compiled forward runs none)")
        return lost + [f"{kind}: {why}" for kind, why in self.failures.items()]

    def fail(self, kind: str, error: BaseException) -> None:
        if kind not in self.failures:
            self.failures[kind] = f"{type(error).__name__}: {error}"
            if kind == "attention":
                self.attention_observers.clear()  # the next lookups hand the model its own functions
                self._attention_lanes.clear()
            elif kind == "hidden_states":
                self._hidden_lanes.clear()
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
            stash = self._stash
            if stash.awaits_chosen:
                name = "decoder_input_ids" if self.is_encoder_decoder else "input_ids"
                ids = kwargs.get(name)
                if ids is None and args and not self.is_encoder_decoder:
                    ids = args[0]
                if isinstance(ids, torch.Tensor) and ids.dim() == 2:
                    self._keep_chosen(ids)  # a reference: the fold reads its last column
            if self.steps_seen:
                self._prompt_done()
                if self._prompt_root_hook is not None:
                    with _HOOKS_LOCK:
                        self._prompt_root_hook.remove()
                    self._prompt_root_hook = None
            if stash.full:
                self._flush()
        except Exception as error:  # noqa: BLE001 - capture must never break generation
            self.fail("steps", error)

    def _after_forward(self, module: nn.Module, args: tuple, *kwargs_and_output: Any) -> None:
        if not self._is_mine() or len(kwargs_and_output) != 2:
            return
        output = kwargs_and_output[-1]
        self.step_seconds.append(time.perf_counter() - self.started)
        try:
            if self.switches.logits and "logits" not in self.failures:
                logits = getattr(output, "logits", None)
                if logits is None:
                    logits = _first_tensor(output)
                if logits is None:
                    raise TypeError(f"forward output {type(output).__name__} has no logits")
                self._stash.put_logits(logits)
            self._stash.close_slot()
            self._slot = self._stash.filled
            self.steps_seen += 1
        except Exception as error:  # noqa: BLE001
            self.fail("steps", error)

    def layer_output(self, module: nn.Module, output: Any, hooked: bool = False) -> None:
        """A decoder layer's output: called by a tapped layer class (``layer_taps``) for every layer call
        on this thread, and (``hooked``) by the forward hook of a layer that could not be tapped.

        Runs for every layer of every step, cold between two layers' matmuls (about a microsecond a line
        on a 56M model): a tapped layer already kept once during decoding goes straight to the stash."""
        index = self._hidden_lanes.get(id(module))
        if index is not None and type(output) is torch.Tensor:
            try:
                self._stash.put_hidden(index, output)
            except Exception as error:  # noqa: BLE001 - a hook error would break the model's forward
                self.fail("hidden_states", error)
            return
        index = (self._hooked if hooked else self._tapped).get(id(module))
        if index is None or "hidden_states" in self.failures:
            return
        try:
            hidden = output if type(output) is torch.Tensor else _first_tensor(output)
            if hidden is not None and hidden.dim() == 3:
                self._stash.put_hidden(index, hidden)
                if self.steps_seen == 0:
                    if self._in_prefill() and self._prompt_fits(hidden.shape[1]):
                        self.prompt_hidden[index] = hidden
                elif not hooked and hidden is output:
                    self._hidden_lanes[id(module)] = index
        except Exception as error:  # noqa: BLE001
            self.fail("hidden_states", error)

    def _after_layer(self, module: nn.Module, args: tuple, output: Any) -> None:
        """The forward hook of a layer that could not be tapped."""
        if ACTIVE_CAPTURE.get() is self:
            self.layer_output(module, output, hooked=True)

    def observer_of(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """What the model calls instead of attention function ``function`` for the rest of this call:
        an observer that stashes its query rows first, or ``function`` itself when attention is not
        captured (any more). The attention lookup keeps it in ``attention_observers``.

        The observer runs for every layer of every step, cold between two layers' matmuls: a decoding
        step of a layer let in this block goes from it straight to its keys' short path
        (:meth:`~.stash._LayerKeys.keep_row`), one frame fewer than through :meth:`observe_attention`."""
        if not self.switches.attention or "attention" in self.failures:
            return function
        lanes, observe, fail = self._attention_lanes, self.observe_attention, self.fail

        def observed(module, query, key, value, attention_mask, *args, **kwargs):
            lane = lanes.get(id(module))
            try:
                if lane is None or not lane.keep_row(self._slot, query, key, attention_mask, kwargs):
                    observe(module, query, key, attention_mask, kwargs)
            except Exception as error:  # noqa: BLE001 - a hook error would break the model's forward
                fail("attention", error)
            return function(module, query, key, value, attention_mask, *args, **kwargs)

        return observed

    def observe_attention(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        mask: torch.Tensor | None,
        kwargs: dict,
    ) -> None:
        """An attention call this session's observer (``observer_of``) did not send down a layer's short
        path: the prefill, a block's first decoding step, a layer that scores its rows per step."""
        if "attention" in self.failures:
            return
        try:
            layer = self.layout.self_attention.get(id(module))
            if layer is None:
                encoder_layer = self.layout.encoder_self_attention.get(id(module))
                if encoder_layer is not None and self._prompt_fits(query.shape[2]):
                    self._keep_prompt_attention(encoder_layer, module, query, key, mask, kwargs, causal=False)
                return
            if self.steps_seen == 0 and self._in_prefill() and self._prompt_fits(query.shape[2]):
                self._keep_prompt_attention(layer, module, query, key, mask, kwargs, causal=True)
            appending = self._appending.get(layer)
            if appending is None:
                appending = self._appending[layer] = cache_layer_appends(self.cache, layer)
            per_step = self.per_step_attention or not appending
            if self._stash.put_attention(layer, query, key, mask, kwargs, per_step):
                self._attention_lanes[id(module)] = self._stash.keys[layer]
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
            mask=four_d_mask(mask),
            scaling=kwargs.get("scaling"),
            position_bias=kwargs.get("position_bias"),
            softcap=kwargs.get("softcap"),
            is_causal=bool(getattr(module, "is_causal", causal)) and causal,
        )

    def deliver_pending(self, chosen: torch.Tensor | None) -> StepBlock | None:
        """Hand the stashed steps on now (a stopping criterion knows the last one's chosen token already)."""
        if not self._is_mine():
            return None
        self._keep_chosen(chosen)
        self._prompt_done()
        return self._flush()
