"""The block of steps being captured: what the hooks keep of each new position, folded in one pass.

Per step the hooks do only what cannot wait: keep references to the new position's raw logits, each
layer's output, its query and the key tensor it attended with (a decoding step's logits, output and query
are fresh one-position tensors: keeping them costs what a copy would hold, without an operation per
layer and step). Every few steps (and at the end) ``fold`` gathers the hidden vectors in one
concatenation, scores all stashed query rows of a layer against its latest keys in one matmul and hands
the block on as a :class:`StepBlock`, whose logits stay per step until a plugin reads them (the built-in
logit pass stacks a few steps at a time, in the CPU's cache). A referenced tensor that the model changed
in place before the fold (its version counter moved) is never read: that capture kind fails for the
call.

Scoring later against the latest keys is exact only while the cache is append-only: step ``s``'s keys
are the first ``n_s`` keys of every later step. A layer whose key count does not grow by one per step
(sliding windows, cropping, static caches), beam search (which reorders the cache), a position bias or a
cache type not known to append are scored at once, per step, on the keys that step saw ("settled").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional

from .attention_math import (
    allowed_keys,
    four_d_mask,
    new_query_probabilities,
    query_probabilities,
    softmax_in_place,
    staircase_logits,
)
from .records import PerStep, StepBlock

# The memory one kind of buffer (or a block's attention weights) may take: blocks get shorter than the
# configured number of steps for wide batches, long contexts and large vocabularies.
BUFFER_BUDGET_BYTES = 32 * 2**20
_FLOAT_BYTES = 4


def _capacity_for(bytes_per_step: int) -> int:
    return max(1, BUFFER_BUDGET_BYTES // max(1, bytes_per_step))


@dataclass
class _LayerKeys:
    """One layer's attention bookkeeping across steps (it outlives blocks)."""

    key: torch.Tensor | None = None  # the latest key tensor the layer attended with: a reference
    key_count: int | None = None
    scaling: float | None = None
    softcap: float | None = None
    # Slots waiting to be scored against ``key``: (slot, the query the layer saw, its version then).
    pending: list[tuple[int, torch.Tensor, int | None]] = field(default_factory=list)
    masks: dict[int, torch.Tensor | None] = field(default_factory=dict)  # slot -> the mask it saw
    # Scored runs of slots: (first slot, weights (n, rows, heads, keys), key counts (n, rows)).
    settled: list[tuple[int, torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def keep_row(self, slot: int, query: torch.Tensor, key: torch.Tensor, mask: Any, kwargs: dict) -> bool:
        """A decoding step's one new query row, kept by reference to be scored at fold; False (nothing
        kept) unless the keys grew by exactly one since the last row and no position bias is added.

        The short path of a layer whose earlier call this block went through
        :meth:`StepStash.put_attention` and was let in (its cache appends, its rows need no scoring per
        step, the block's length is fitted): it runs for every layer of every step, cold between two
        layers' matmuls, so it touches only this state, the tensors and ``kwargs``. One new key means one
        new position: the query's shape is not read (the fold's concatenation fails on differing rows)."""
        count = key.shape[2]
        if count - 1 != self.key_count or kwargs.get("position_bias") is not None:
            return False
        try:
            self.pending.append((slot, query, query._version))
        except RuntimeError:  # made under torch.inference_mode(): no version counter to check
            self.pending.append((slot, query.clone(), None))
        # four_d_mask() inline: this runs on every layer of every step, where a call costs more than the test.
        if isinstance(mask, torch.Tensor) and mask.dim() == 4:  # no entry: no mask
            self.masks[slot] = mask
        self.key, self.key_count = key, count
        self.scaling, self.softcap = kwargs.get("scaling"), kwargs.get("softcap")
        return True


def _additive(row: torch.Tensor) -> torch.Tensor:
    """A mask row as float32 to add to scores: its own values, -inf where it does not allow a key."""
    values = torch.zeros(row.shape, device=row.device) if row.dtype == torch.bool else row.float()
    return values.masked_fill(~allowed_keys(row), float("-inf"))


# How many tensors reference a storage (torch-internal; without it every fold gets a fresh buffer).
_STORAGE_USE_COUNT = getattr(torch._C, "_storage_Use_Count", None)


class ReusedBuffer:
    """A float32 buffer the folds of one generation share for their attention weights, the largest thing a
    fold makes (layers x rows x heads x steps x keys: 27 MiB for a block of GPT-2 small at batch 4 with 384
    keys). A fresh one per block was mapped, faulted in page by page and unmapped again each time.

    The last block's weights must stay what they were for whoever still holds them: a plugin may keep a
    view. So the buffer is reused only when no tensor but our own references its storage; otherwise the
    holder keeps it and the fold gets a new one."""

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None

    def take(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """A contiguous float32 tensor of ``shape`` on ``device``, its values undefined."""
        needed = math.prod(shape)
        buffer = self._buffer
        if buffer is None or buffer.device != device or buffer.numel() < needed or _held_elsewhere(buffer):
            # Headroom for the next blocks' wider rows, within the budget a block's weights have.
            room = max(needed, min(needed + needed // 2, BUFFER_BUDGET_BYTES // _FLOAT_BYTES))
            buffer = self._buffer = torch.empty(room, device=device)
        return buffer[:needed].view(shape)

    def release(self) -> None:
        self._buffer = None


def _held_elsewhere(buffer: torch.Tensor) -> bool:
    if _STORAGE_USE_COUNT is None:
        return True
    # Our own tensor, and the storage object made to ask.
    return _STORAGE_USE_COUNT(buffer.untyped_storage()._cdata) > 2


class ChangedInPlace(RuntimeError):
    """A tensor the capture kept a reference to was modified in place before it was read."""


def _kept(tensor: torch.Tensor, positions: int) -> tuple[torch.Tensor, int | None]:
    """The newest position of ``tensor`` (along dim ``positions``) to keep until the fold, with its
    version: a reference for a one-position tensor; a private copy (version None, nothing else writes it)
    for a prefill pass (its last position only, not the whole prompt's) and for tensors made under
    ``torch.inference_mode()``, which keep no version counter to check."""
    length = tensor.shape[positions]
    if length != 1:
        return tensor.narrow(positions, length - 1, 1).clone(), None
    if tensor.is_inference():
        return tensor.clone(), None
    return tensor, tensor._version


def _unchanged(tensor: torch.Tensor, version: int | None) -> torch.Tensor:
    if version is not None and tensor._version != version:
        raise ChangedInPlace(
            f"the model changed a captured {tuple(tensor.shape)} tensor in place before it was read"
        )
    return tensor


def _pending_queries(state: _LayerKeys) -> torch.Tensor:
    """``(rows, heads, n, dim)`` float32: the layer's pending query rows (one position each), in order,
    each checked unchanged since it was kept."""
    return torch.cat([_unchanged(query, version) for _, query, version in state.pending], dim=2).float()


class _KeptSteps:
    """Per-step references and the versions they had when kept: what a :class:`PerStep` checks."""

    def __init__(self, versions: dict[int, int | None]) -> None:
        self.versions = versions  # id(part) -> version when kept

    def __call__(self, parts: Sequence[torch.Tensor]) -> None:
        for part in parts:
            _unchanged(part, self.versions[id(part)])


class StepStash:
    """Buffers for up to ``capacity`` steps starting at step ``start``."""

    def __init__(
        self,
        start: int,
        num_layers: int,
        max_steps: int,
        keys: list[_LayerKeys],
        logits_buffer: ReusedBuffer,
    ) -> None:
        self.start = start
        self.num_layers = num_layers
        self.capacity = max_steps
        self.filled = 0  # completed slots; the slot being written is ``filled``
        self.rows: int | None = None
        # Per completed slot: the raw logits ``(rows, 1, vocab)`` (a reference, or a private copy of the
        # last position) and the version it had.
        self.logit_refs: list[tuple[torch.Tensor, int | None]] = []
        self.logits_error: Exception | None = None  # a kept logit tensor was changed in place
        # (slot, layer, the layer's output (rows, 1, dim), its version then): gathered at fold.
        self.hidden_refs: list[tuple[int, int, torch.Tensor, int | None]] = []
        self.query_bytes_checked = False  # the block's length was fitted to the attention it will score
        # (slot, the tokens it chose (rows,) or the next pass' input ids (rows, positions), their version):
        # references, read at fold (an index and a copy every step cost about what three layers' hooks do).
        self.chosen_refs: list[tuple[int, torch.Tensor, int | None]] = []
        self.chosen_error: Exception | None = None  # a kept token tensor was changed in place
        # Per slot (preallocated: the hooks run on every layer of every step, so they stay minimal):
        self.chosen_known = [False] * max_steps
        self.keys = keys  # shared with the session: per-layer state outlives the block
        self.logits_buffer = logits_buffer  # likewise: the session's, reused by every block's fold
        self.attention_error: Exception | None = None  # scoring failed at fold time: no attention
        self.hidden_error: Exception | None = None  # gathering failed at fold time: no hidden states

    # -- writing ---------------------------------------------------------------------------------

    @property
    def full(self) -> bool:
        return self.filled >= self.capacity

    def _fit(self, step_bytes: int) -> None:
        if self.filled == 0:  # the block can still be shortened: nothing is stashed beyond slot 0
            self.capacity = min(self.capacity, _capacity_for(step_bytes))

    def _check_rows(self, rows: int) -> None:
        if self.rows is None:
            self.rows = rows
        elif rows != self.rows:
            raise ValueError(f"{rows} rows in a forward pass of a {self.rows}-row generation")

    def put_hidden(self, layer: int, hidden: torch.Tensor) -> None:
        """``hidden`` ``(rows, positions, dim)``: layer ``layer``'s output; its last position is kept.

        Runs for every layer of every step, after the layer's weights streamed through the CPU's caches:
        each line of it runs cold (about 1 µs a line on a 56M model), so a decoding step after the block's
        first takes the shortest path; the fold checks the rows (stacking differing ones fails)."""
        refs = self.hidden_refs
        if refs and hidden.shape[1] == 1:
            try:
                refs.append((self.filled, layer, hidden, hidden._version))
                return
            except RuntimeError:  # made under torch.inference_mode(): no version counter to check
                pass
        rows, _, dim = hidden.shape
        if not refs:
            self._fit(_FLOAT_BYTES * self.num_layers * rows * dim)
        if rows != self.rows:
            self._check_rows(rows)
        refs.append((self.filled, layer, *_kept(hidden, 1)))

    def put_logits(self, logits: torch.Tensor) -> None:
        """``logits`` ``(rows, positions, vocab)``: the forward pass' raw logits; its last position is kept
        (as a reference: the model hands them to generate(), which copies what it changes).

        Runs right after the output layer's matmul, cold like ``put_hidden``: a decoding step's one
        position is kept as it is (even a view costs tens of µs here); the fold takes the position out."""
        refs = self.logit_refs
        if refs and logits.shape[1] == 1 and logits.shape[0] == self.rows and len(refs) == self.filled:
            try:
                refs.append((logits, logits._version))
                return
            except RuntimeError:  # made under torch.inference_mode(): no version counter to check
                pass
        if not self.logit_refs:
            self._check_rows(logits.shape[0])
            self._fit(_FLOAT_BYTES * logits.shape[0] * logits.shape[2])
        elif logits.shape[0] != self.rows:
            self._check_rows(logits.shape[0])
        if len(self.logit_refs) != self.filled:
            raise RuntimeError(f"logits for step slot {self.filled} after {len(self.logit_refs)} slots")
        self.logit_refs.append(_kept(logits, 1))

    def put_attention(
        self,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        mask: Any,
        kwargs: dict,
        per_step: bool,
    ) -> bool:
        """The layer's query ``(rows, heads, q_len, dim)`` and keys ``(rows, kv_heads, keys, dim)``. True when
        its newest row was kept to be scored at fold: the layer's next decoding steps may go straight to
        its state's :meth:`_LayerKeys.keep_row` for the rest of this block."""
        state = self.keys[layer]
        count = key.shape[2]
        rows, _, positions, _ = query.shape
        if rows != self.rows:
            self._check_rows(rows)
        position_bias, softcap = kwargs.get("position_bias"), kwargs.get("softcap")
        appends = state.key_count is None or count == state.key_count + positions
        mask = four_d_mask(mask)
        if per_step or position_bias is not None or not appends:
            self.settle(layer)  # the pending rows' keys are about to change: score them on the old ones
            probs, counts = new_query_probabilities(
                query, key, mask, kwargs.get("scaling"), position_bias=position_bias, softcap=softcap
            )
            state.settled.append((self.filled, probs[None], counts[None]))
            kept = False
        else:
            if not self.query_bytes_checked:
                _, heads, _, dim = query.shape
                # The stashed query rows and, at fold, the weights of every layer's rows over its keys.
                self._fit(self.num_layers * rows * heads * (dim + count + self.capacity) * _FLOAT_BYTES)
                self.query_bytes_checked = True
            slot = self.filled
            state.pending.append((slot, *_kept(query, 2)))
            if mask is not None:
                state.masks[slot] = mask
            kept = True
        state.key, state.key_count = key, count
        state.scaling, state.softcap = kwargs.get("scaling"), softcap
        return kept

    @property
    def awaits_chosen(self) -> bool:
        """Whether the last completed step still waits for its chosen token."""
        return bool(self.filled) and not self.chosen_known[self.filled - 1]

    def put_chosen(self, chosen: torch.Tensor | None) -> None:
        """The tokens the last completed step chose: ``(rows,)``, or the input ids ``(rows, positions)`` of
        the forward pass after it, whose last column they are. Input ids (a decoding step's own small
        tensor) are kept by reference; tokens, often a view of whole sequences, as a copy. The fold reads
        them (and leaves tokens that do not fit the block's rows unknown)."""
        if chosen is None or not self.awaits_chosen:
            return
        slot = self.filled - 1
        try:
            if chosen.dim() == 2:
                self.chosen_refs.append((slot, chosen, chosen._version))
            else:
                self.chosen_refs.append((slot, chosen.clone(), None))
        except RuntimeError:  # made under torch.inference_mode(): no version counter to check
            self.chosen_refs.append((slot, chosen.clone(), None))
        self.chosen_known[slot] = True

    def close_slot(self) -> None:
        self.filled += 1

    # -- folding ---------------------------------------------------------------------------------

    def settle(self, layer: int) -> None:
        """Score layer ``layer``'s pending query rows now, against the keys it holds."""
        state = self.keys[layer]
        if not state.pending or state.key is None or state.key_count is None:
            state.pending.clear()
            return
        slots = [slot for slot, _, _ in state.pending]
        queries = _pending_queries(state)
        last = state.key_count
        first = last - (len(slots) - 1)  # append-only: one more key per pending step
        steps = torch.arange(len(slots), device=queries.device)
        masks = [state.masks.pop(slot, None) for slot in slots]
        # Each stashed row against the latest keys, masked to the keys its own step saw.
        if all(mask is None for mask in masks):
            scores = staircase_logits(queries, state.key, first, state.scaling, state.softcap)
            probs = softmax_in_place(scores)
            counts = (steps + first).expand(probs.shape[0], -1)  # (rows, n)
        else:
            positions = torch.arange(last, device=queries.device)
            allowed = (positions[None, :] - steps[:, None] < first)[None, None]  # (1, 1, n, keys)
            mask = self._with_masks(allowed, masks, first)
            probs = query_probabilities(queries, state.key, mask, state.scaling, softcap=state.softcap)
            counts = allowed_keys(mask).expand(probs.shape[0], 1, -1, -1)[:, 0].sum(dim=-1)
        state.settled.append((slots[0], probs.permute(2, 0, 1, 3), counts.T))
        state.pending.clear()

    @staticmethod
    def _with_masks(allowed: torch.Tensor, masks: list[torch.Tensor | None], first: int) -> torch.Tensor:
        """One mask ``(r, h, n, keys)`` for the pending rows: each step's own key count (``allowed``) and
        the newest query row of the 4-D mask it saw. Boolean when every mask was; otherwise additive,
        with -inf wherever a row may not attend (decided in the mask's own dtype)."""
        keys = allowed.shape[-1]
        rows = [
            mask[:, :, -1, : first + offset] if mask is not None else allowed.new_ones((1, 1, first + offset))
            for offset, mask in enumerate(masks)
        ]
        if any(row.dtype != torch.bool for row in rows):
            rows = [_additive(row) for row in rows]
        blocked = False if rows[0].dtype == torch.bool else float("-inf")
        leading = torch.broadcast_shapes(*(row.shape[:2] for row in rows))
        padded = [functional.pad(row, (0, keys - row.shape[-1]), value=blocked) for row in rows]
        stacked = torch.stack([row.expand(*leading, keys) for row in padded], dim=2)
        return stacked & allowed if blocked is False else stacked.masked_fill(~allowed, blocked)

    def fold(self) -> list[StepBlock]:
        """The filled slots as blocks; runs of slots with the same captured kinds stay together."""
        steps = self.filled
        if steps == 0 or self.rows is None:
            return []
        attention_layers = self._attention_layers(steps)
        try:
            weights, scores, attention_keys = self._attention(steps)
        except Exception as error:  # noqa: BLE001 - the session reports it; the other kinds go on
            self.attention_error, weights, scores, attention_keys = error, None, None, None
            for state in self.keys:
                state.pending.clear()
                state.settled.clear()
        try:
            hidden = self._hidden(steps)
        except Exception as error:  # noqa: BLE001 - reported like the attention's
            self.hidden_error, hidden = error, None
        try:
            logits = self._logits(steps)
        except Exception as error:  # noqa: BLE001 - reported like the attention's
            self.logits_error, logits = error, None
        try:
            chosen = self._chosen()
        except Exception as error:  # noqa: BLE001 - reported like the attention's
            self.chosen_error, chosen = error, None
            self.chosen_known = [False] * len(self.chosen_known)
        hidden_layers = [0] * steps  # per slot, the layers whose output was kept
        for slot, _, _, _ in self.hidden_refs:
            if slot < steps:
                hidden_layers[slot] += 1
        complete_hidden = [hidden_layers[i] == self.num_layers for i in range(steps)]
        complete_attention = [attention_layers[i] == self.num_layers for i in range(steps)]
        blocks = []
        begin = 0
        for end in range(1, steps + 1):
            if end < steps and (
                complete_hidden[end] == complete_hidden[begin]
                and complete_attention[end] == complete_attention[begin]
            ):
                continue
            window = slice(begin, end)
            has_hidden = hidden is not None and complete_hidden[begin]
            has_attention = attention_keys is not None and complete_attention[begin]
            blocks.append(
                StepBlock(
                    start=self.start + begin,
                    steps=end - begin,
                    rows=self.rows,
                    logits=None if logits is None else logits.window(window),
                    hidden=hidden[window] if has_hidden else None,  # type: ignore[index]
                    attention=weights[window] if has_attention and weights is not None else None,
                    attention_logits=scores[window] if has_attention and scores is not None else None,
                    attention_keys=attention_keys[window] if has_attention else None,  # type: ignore[index]
                    chosen=None if chosen is None else chosen[window],
                    chosen_known=tuple(self.chosen_known[begin:end]),
                )
            )
            begin = end
        return blocks

    def _attention_layers(self, steps: int) -> list[int]:
        """Per slot, the layers whose attention row was kept or scored."""
        layers = [0] * steps
        for state in self.keys:
            for slot, _, _ in state.pending:
                if slot < steps:
                    layers[slot] += 1
            for first, probs, _ in state.settled:
                for slot in range(first, min(steps, first + probs.shape[0])):
                    layers[slot] += 1
        return layers

    def _chosen(self) -> torch.Tensor | None:
        """``(capacity, rows)`` the chosen tokens of every slot, ``-1`` where unknown."""
        refs = self.chosen_refs
        if not refs or self.rows is None:
            return None
        chosen = torch.full((self.capacity, self.rows), -1, dtype=torch.long, device=refs[0][1].device)
        slots, tokens = [], []
        for slot, tensor, version in refs:
            last = _unchanged(tensor, version)
            last = last[:, -1] if last.dim() == 2 else last
            if last.shape[0] == self.rows:
                slots.append(slot)
                tokens.append(last)
            else:
                self.chosen_known[slot] = False
        if tokens:
            stacked = torch.stack(tokens)
            if slots == list(range(slots[0], slots[0] + len(slots))):  # the usual case: no index tensor
                chosen[slots[0] : slots[0] + len(slots)] = stacked
            else:
                chosen[torch.tensor(slots, device=chosen.device)] = stacked
        return chosen

    def _logits(self, steps: int) -> PerStep | None:
        """The block's logits, still one reference per step (checked now, and again when stacked)."""
        if not self.logit_refs:
            return None
        if len(self.logit_refs) < steps:
            raise RuntimeError(f"logits of {len(self.logit_refs)} of {steps} steps")
        # Each step's one position, as a view (it shares the version counter its reference had).
        kept = [(part.select(1, 0), version) for part, version in self.logit_refs[:steps]]
        check = _KeptSteps({id(part): version for part, version in kept})
        parts = [part for part, _ in kept]
        check(parts)
        return PerStep(parts, check)

    def _hidden(self, steps: int) -> torch.Tensor | None:
        """``(steps, layers, rows, dim)`` float32 hidden vectors at each step's new position."""
        refs = self.hidden_refs
        if not refs or self.rows is None:
            return None
        first, layers = refs[0][2], self.num_layers
        kept = [ref for ref in refs if ref[0] < steps]
        in_order = [(slot, layer) for slot in range(steps) for layer in range(layers)]
        if [(slot, layer) for slot, layer, _, _ in kept] == in_order:
            # Every layer of every step, in order (the usual case): one concatenation, no index tensor
            # (building one would copy from the host to the model's device).
            gathered = torch.stack([_unchanged(tensor, version) for _, _, tensor, version in kept])
            return gathered.view(steps, layers, self.rows, first.shape[-1]).float()  # one copy, in order
        shape = (steps, layers, self.rows, first.shape[-1])
        hidden = torch.zeros(shape, dtype=torch.float32, device=first.device)
        for slot, layer, tensor, version in kept:  # some step missed a layer: that step is left out later
            hidden[slot, layer] = _unchanged(tensor, version)[:, 0]
        return hidden

    def _staircase_block(self, steps: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The usual block, scored into one buffer: every layer's rows of steps ``0 .. steps - 1`` pending
        against the same number of keys, with no mask and nothing settled. None for any other block.

        Its attention *logits* (the weights are their softmax, made only if a plugin reads them: the
        built-in statistics come from the logits, without the softmax's division or a log per weight),
        laid out ``(layers, rows, heads, steps, keys)``, as the scoring produces them, and handed on as a
        ``(steps, layers, rows, heads, keys)`` view: no tensor per layer, no stacking."""
        states = self.keys
        count = states[0].key_count
        in_order = list(range(steps))
        for state in states:
            if (
                state.settled
                or state.key is None
                or state.key_count != count
                or [slot for slot, _, _ in state.pending] != in_order
                or any(mask is not None for mask in state.masks.values())
            ):
                return None
        assert count is not None  # every layer's key tensor is known
        first = count - (steps - 1)
        reference = states[0].pending[0][1]
        rows, heads, _, _ = reference.shape
        scores = self.logits_buffer.take((len(states), rows, heads, steps, count), reference.device)
        for layer, state in enumerate(states):
            queries = _pending_queries(state)
            staircase_logits(queries, state.key, first, state.scaling, state.softcap, scores[layer])
            state.pending.clear()
            state.masks.clear()
        counts = (torch.arange(steps, device=reference.device) + first)[:, None, None]
        return scores.permute(3, 0, 1, 2, 4), counts.expand(steps, len(states), rows).contiguous()

    def _attention(self, steps: int) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """``(steps, layers, rows, heads, keys)`` weights or (the usual block) the logits they are the
        softmax of, the other None, and ``(steps, layers, rows)`` key counts."""
        if not any(state.pending or state.settled for state in self.keys):
            return None, None, None
        block = self._staircase_block(steps)
        if block is not None:
            return None, *block
        for layer in range(self.num_layers):
            self.settle(layer)
        runs = [self.keys[layer].settled for layer in range(self.num_layers)]
        reference = next((probs for settled in runs for _, probs, _ in settled), None)
        if reference is None:
            return None, None, None
        rows, heads = reference.shape[1], reference.shape[2]
        widest = max(probs.shape[-1] for settled in runs for _, probs, _ in settled)
        weights = reference.new_zeros((steps, self.num_layers, rows, heads, widest))
        counts = torch.zeros((steps, self.num_layers, rows), dtype=torch.long, device=reference.device)
        for layer, settled in enumerate(runs):
            for first, probs, key_counts in settled:
                window = slice(first, min(steps, first + probs.shape[0]))
                used = window.stop - window.start
                weights[window, layer, :, :, : probs.shape[-1]] = probs[:used]
                counts[window, layer] = key_counts[:used]
            settled.clear()
        return weights, None, counts

    def held_bytes(self) -> int:
        """Memory this block keeps alive: its buffers and the storage behind every kept reference."""
        kept = [tensor for tensor, _ in self.logit_refs] + [tensor for _, _, tensor, _ in self.hidden_refs]
        kept += [tensor for _, tensor, _ in self.chosen_refs]
        kept += [query for state in self.keys for _, query, _ in state.pending]
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in kept}
        return sum(storages.values())

    def release(self) -> None:
        """Drop per-layer references to the model's keys (the block's own buffers go with it)."""
        self.hidden_refs.clear()
        self.logit_refs.clear()
        self.chosen_refs.clear()
        for state in self.keys:
            state.key = None
            state.pending.clear()
            state.masks.clear()
            state.settled.clear()


def new_layer_keys(num_layers: int) -> list[_LayerKeys]:
    return [_LayerKeys() for _ in range(num_layers)]
