"""Prompt analysis from the prefill pass (or the seq2seq encoder pass): no second forward pass.

- Per-position surprisal (causal LMs): bits of each prompt token given the tokens before it.
- Layer transformation: 1 - cosine between consecutive layers' outputs, per position.
- Basin score per layer and head: attention to the middle third of the keys a query may see, against the
  boundary thirds, divided by what uniform attention would give; uniform attention scores exactly 1.0
  under any causal or padding mask, a head that ignores the middle scores near 0.
- Sparse attention (full capture only): weights above a threshold, the largest few per head.

Prompt arrays have one entry per *prompt* (batch entry), not per generated row: the copies generate()
makes for beams or ``num_return_sequences`` are identical. Attention is computed in chunks of queries, so
memory stays linear in the prompt length; the core skips prompts longer than ``prompt_max_tokens``.

Attention statistics cost (queries × keys) per layer and head, as much as the model's own attention in
the prefill: for prompts longer than ``attention_queries`` (plugin option, default 128) they use that
many evenly spaced query positions, the last one included (``corevital.prompt.attention_queries`` says
how many were used). Basin scores are then ratios of sums over those queries; sparse weights are the
largest among them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from corevital_otel import GenerationInfo, GenerationResults, PromptCapture, hookimpl
from corevital_otel.plugins import _options
from corevital_otel.plugins._entropy import LN2
from corevital_otel.plugins._profiles import PROFILE_KEY, ProfileOptions, Thresholds, thresholds_for
from corevital_otel.plugins._summary import finite_reduce, wants_detail

COREVITAL_PLUGIN_NAME = "prompt"
DEFAULT_ATTENTION_QUERIES = 128


class PromptOptions(_options.PluginOptions):
    surprisal: Any = _options.option(False, "per-position prompt surprisal (runs the head over the prompt)")
    attention_queries: Any = _options.option(
        DEFAULT_ATTENTION_QUERIES, "longer prompts get attention statistics from this many query positions"
    )


COREVITAL_OPTIONS = {COREVITAL_PLUGIN_NAME: PromptOptions, PROFILE_KEY: ProfileOptions}
CHUNK_ELEMENTS = 1 << 22  # float32 elements per chunk of logits or attention weights (16 MiB)


@dataclass(frozen=True)
class PromptRows:
    """Which captured rows hold distinct prompts, with their tokens and padding masks."""

    select: slice  # captured rows -> prompts (generate() repeats each prompt consecutively)
    captured: int  # rows in the capture
    ids: torch.Tensor | None  # (prompts, length)
    real: torch.Tensor  # (prompts, length) bool, True for real (non-padding) tokens

    @property
    def count(self) -> int:
        return int(self.real.shape[0])

    @property
    def length(self) -> int:
        return int(self.real.shape[1])


def prompt_rows(prompt: PromptCapture) -> PromptRows | None:
    """Map the capture's rows to prompts; None when the capture does not line up with the inputs."""
    if not prompt.hidden_states:
        return None
    captured, length = prompt.hidden_states[0].shape[:2]
    ids = prompt.input_ids
    if ids is not None and (ids.shape[1] != length or captured % ids.shape[0]):
        return None
    prompts = ids.shape[0] if ids is not None else captured
    device = prompt.hidden_states[0].device
    mask = prompt.attention_mask
    real = (
        mask.to(device).bool()
        if mask is not None and tuple(mask.shape) == (prompts, length)
        else torch.ones((prompts, length), dtype=torch.bool, device=device)
    )
    select = slice(None, None, captured // prompts)
    return PromptRows(select, captured, None if ids is None else ids.to(device), real)


def prompt_surprisal(prompt: PromptCapture, rows: PromptRows) -> torch.Tensor | None:
    """``(prompts, length)`` bits of token i given the tokens before it; NaN where undefined (first real
    token, padding). None for encoders or when the output embeddings are unavailable."""
    if prompt.is_encoder or rows.ids is None or prompt.output_embeddings is None or rows.length < 2:
        return None
    # The vocabulary size bounds the chunk; a quantized head's ``weight`` is a method, not a tensor.
    weight = getattr(prompt.output_embeddings, "weight", None)
    weight = weight() if callable(weight) else weight
    vocab = int(weight.shape[0]) if isinstance(weight, torch.Tensor) else 1 << 16
    chunk = max(1, CHUNK_ELEMENTS // (rows.captured * vocab))
    surprisal = torch.full((rows.count, rows.length), float("nan"), device=rows.real.device)
    for start in range(0, rows.length - 1, chunk):
        stop = min(start + chunk, rows.length - 1)
        logits = prompt.position_logits(slice(start, stop))
        if logits is None:
            return None
        log_probs = torch.log_softmax(logits[rows.select].float(), dim=-1)
        following = rows.ids[:, start + 1 : stop + 1].unsqueeze(-1)
        surprisal[:, start + 1 : stop + 1] = -log_probs.gather(-1, following).squeeze(-1) / LN2
    defined = torch.zeros_like(rows.real)
    defined[:, 1:] = rows.real[:, 1:] & rows.real[:, :-1]
    return torch.where(defined, surprisal, torch.full_like(surprisal, float("nan")))


def layer_transformation(prompt: PromptCapture, rows: PromptRows) -> torch.Tensor:
    """``(prompts, layers, length)``: 1 - cos(output of layer l-1, output of layer l) per position; layer 0
    (whose input is not captured) and padding positions are NaN."""
    states = prompt.hidden_states or []
    result = torch.full((rows.count, len(states), rows.length), float("nan"), device=rows.real.device)
    previous = states[0][rows.select].float()
    previous_norm = torch.linalg.vector_norm(previous, dim=-1).clamp_min_(1e-8)
    for layer in range(1, len(states)):
        current = states[layer][rows.select].float()  # one float copy per layer pair, not per stack
        current_norm = torch.linalg.vector_norm(current, dim=-1).clamp_min_(1e-8)
        # The cosine as torch's cosine_similarity defines it (each norm at least 1e-8), with each layer's
        # norm computed once for both of its pairs: half the passes.
        cosine = torch.linalg.vecdot(previous, current) / (previous_norm * current_norm)
        result[:, layer] = 1.0 - cosine
        previous, previous_norm = current, current_norm
    return torch.where(rows.real.unsqueeze(1), result, torch.full_like(result, float("nan")))


def _visible_keys(rows: PromptRows, queries: range, causal: bool) -> torch.Tensor:
    """``(prompts, queries, keys)`` True where the query may attend to the key."""
    visible = rows.real.unsqueeze(1).expand(-1, len(queries), -1)
    if causal:
        device = rows.real.device
        query_index = torch.arange(queries.start, queries.stop, queries.step, device=device).unsqueeze(-1)
        visible = visible & (torch.arange(rows.length, device=device) <= query_index)
    return visible


def _middle_thirds(visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where the middle third of each query's visible keys lies: ``(prompts, queries)`` positions of its
    first and last key (invisible keys between them have weight 0), and how many keys each query sees.
    A query seeing fewer than 3 keys has no middle third (its first position is past its last)."""
    rank = visible.long().cumsum(dim=-1) - 1
    count = visible.sum(dim=-1, keepdim=True)
    middle = visible & (rank >= count // 3) & (rank < 2 * count // 3)
    keys = visible.shape[-1]
    first = middle.int().argmax(dim=-1)
    last = keys - 1 - middle.int().flip(-1).argmax(dim=-1)
    empty = ~middle.any(dim=-1)
    return first.masked_fill(empty, keys), last.masked_fill(empty, 0), count.squeeze(-1)


# Consecutive (query, key) weights searched as one run for the largest weights of a head (see _SparseTop).
_SPARSE_RUN = 64


@dataclass
class _SparseTop:
    """The largest weights above a threshold per prompt and head, merged across query chunks."""

    cap: int
    threshold: float
    weight: torch.Tensor | None = None  # (prompts, heads, <=cap)
    query: torch.Tensor | None = None
    key: torch.Tensor | None = None
    above: torch.Tensor | None = None  # (prompts, heads) weights above the threshold seen so far
    # A buffer the comparisons reuse, shared by the layers of one prompt: a fresh tensor that size per
    # layer and chunk made the allocator map and fault pages in each time.
    work: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, weights: torch.Tensor, first_query: int, query_step: int = 1) -> None:
        prompts, heads, queries, keys = weights.shape
        compared = self.work.get("compared")
        if compared is None or compared.shape != weights.shape:
            compared = self.work["compared"] = torch.empty_like(weights)
        # Compared into a float tensor: a bool result and its sum cost 8x more on the CPU.
        above = torch.gt(weights, self.threshold, out=compared).sum(dim=(-1, -2)).long()
        # The ``cap`` largest weights of a head lie in its ``cap`` runs of ``width`` consecutive weights
        # with the largest maxima (any other run's weights are all below ``cap`` larger ones): search those
        # runs only, copied out as whole rows of a flat view (a gather with an expanded index was 5x slower).
        width = _SPARSE_RUN if (queries * keys) % _SPARSE_RUN == 0 else keys
        runs = weights.reshape(prompts * heads, -1, width)  # a view of the usual contiguous weights
        per_head = runs.shape[1]
        best = runs.amax(dim=-1).topk(min(self.cap, per_head), dim=-1).indices  # (prompts * heads, runs)
        offsets = torch.arange(prompts * heads, device=weights.device).unsqueeze(-1) * per_head
        candidates = runs.reshape(-1, width).index_select(0, (best + offsets).flatten())
        # A NaN is never kept (as -1). Weights at or below the threshold may be among the largest when few
        # are above it: they are dropped at export, like any weight below the threshold.
        candidates = candidates.nan_to_num_(nan=-1.0).view(prompts, heads, -1)
        value, slot = candidates.topk(min(self.cap, candidates.shape[-1]), dim=-1)
        # The weight's place among this query chunk's (query, key) pairs, then its query position and key.
        place = best.view(prompts, heads, -1).gather(-1, slot // width) * width + slot % width
        query, key = place // keys * query_step + first_query, place % keys
        if self.weight is not None:
            value = torch.cat([self.weight, value], dim=-1)
            query = torch.cat([self.query, query], dim=-1)
            key = torch.cat([self.key, key], dim=-1)
            above = above + self.above
            value, keep = value.topk(min(self.cap, value.shape[-1]), dim=-1)
            query, key = query.gather(-1, keep), key.gather(-1, keep)
        self.weight, self.query, self.key, self.above = value, query, key, above


def sampled_queries(length: int, budget: int) -> range:
    """At most ``budget`` evenly spaced query positions of a ``length``-token prompt, the last included."""
    step = max(1, -(-length // max(1, budget)))
    return range((length - 1) % step, length, step)


def _attention_chunks(prompt: PromptCapture, layer: int, rows: PromptRows, queries: range):
    """Yield ``(query positions, weights (prompts, heads, queries, keys))`` for one layer, in bounded
    chunks of the sampled ``queries``."""
    inputs = prompt.attention_inputs.get(layer)
    if inputs is None:
        return
    heads = int(inputs.query.shape[1])
    chunk = max(1, CHUNK_ELEMENTS // (rows.captured * heads * rows.length))
    for first in range(0, len(queries), chunk):
        part = queries[first : first + chunk]
        weights = prompt.attention_weights(layer, slice(part.start, part.stop, part.step))
        if weights is None or weights.shape[-1] != rows.length:
            return
        yield part, weights[rows.select].float()


def _middle_weights(first: torch.Tensor, last: torch.Tensor, keys: int) -> torch.Tensor:
    """``(prompts, queries, keys)`` 1.0 at key positions ``first .. last`` of each query, else 0."""
    position = torch.arange(keys, device=first.device)
    inside = (position >= first.unsqueeze(-1)) & (position <= last.unsqueeze(-1))
    return inside.float()


def layer_attention(
    prompt: PromptCapture,
    layer: int,
    rows: PromptRows,
    sparse: _SparseTop | None,
    thirds: dict[range, tuple[torch.Tensor, ...]] | None = None,
    queries: range | None = None,
) -> torch.Tensor | None:
    """``(prompts, heads)`` basin scores of one layer (NaN where no query sees 3+ keys); feeds ``sparse``.

    Sums over the prompt's real queries that see at least 3 keys: observed attention mass on the middle
    third of the visible keys (M) and on the rest (B), and the shares uniform attention would give (u,
    1 - u). The score is (M / B) / (u / (1 - u)): exactly 1.0 for uniform attention.
    """
    causal = not prompt.is_encoder
    # Without a padding mask (transformers passes none when every token is real) the softmax already gave
    # every key a query may not see weight exactly 0: the sparse weights need no masking.
    inputs = prompt.attention_inputs.get(layer)
    padded = inputs is None or inputs.mask is not None
    thirds = {} if thirds is None else thirds  # visible keys and middle thirds per query chunk
    queries = range(rows.length) if queries is None else queries
    sums: list[tuple[torch.Tensor, ...]] = []
    for part, weights in _attention_chunks(prompt, layer, rows, queries):
        if part not in thirds:  # the same for every layer: computed once per chunk
            visible = _visible_keys(rows, part, causal)
            first, last, count = _middle_thirds(visible)
            real = rows.real[:, part.start : part.stop : part.step]  # (prompts, queries)
            seen = (visible & real.unsqueeze(-1)).unsqueeze(1).float()  # a real query's visible keys
            thirds[part] = (real, seen, _middle_weights(first, last, rows.length), count)
        real, seen, middle, count = thirds[part]
        counted = (real & (count >= 3)).float()
        # Invisible keys have weight 0: a row's total is its visible mass, and its middle third's mass is
        # a row-wise dot with the 0/1 span of keys from the third's first to its last position (vecdot
        # broadcasts it over the heads; einsum made a bmm of it and copied the weights: 2x slower at batch 4).
        middle_mass = torch.linalg.vecdot(weights, middle.unsqueeze(1))
        boundary_mass = weights.sum(dim=-1) - middle_mass
        uniform_middle = (2 * count // 3 - count // 3) / count.clamp(min=1)  # (prompts, queries)
        sums.append(
            (
                (middle_mass * counted.unsqueeze(1)).sum(dim=-1),
                (boundary_mass * counted.unsqueeze(1)).sum(dim=-1),
                (uniform_middle * counted).sum(dim=-1, keepdim=True),
                ((1.0 - uniform_middle) * counted).sum(dim=-1, keepdim=True),
            )
        )
        if sparse is not None:  # only weights a real query puts on a key it may see
            sparse.add(weights * seen if padded else weights, part.start, part.step)
    if not sums:
        return None
    middle_sum, boundary_sum, uniform_middle_sum, uniform_boundary_sum = (
        torch.stack(parts).sum(dim=0) for parts in zip(*sums, strict=True)
    )
    return (middle_sum / boundary_sum) / (uniform_middle_sum / uniform_boundary_sum)


# Sparse prompt attention kept on a span, over all prompts, layers and heads (the largest weights).
SPARSE_MAX_TOTAL = 256


def _sparse_arrays(tops: list[_SparseTop | None]) -> dict[str, np.ndarray]:
    """Structure of arrays over (prompt, layer, head) of the kept weights, sorted by those and the query."""
    columns: dict[str, list[np.ndarray]] = {name: [] for name in ("prompt", "layer", "head", "query", "key")}
    weights: list[np.ndarray] = []
    dropped = 0
    for layer, top in enumerate(tops):
        if top is None or top.weight is None:
            continue
        kept = top.weight > top.threshold
        index = kept.nonzero(as_tuple=True)  # (prompt, head, slot) of every kept weight
        columns["prompt"].append(index[0].cpu().numpy())
        columns["layer"].append(np.full(index[0].numel(), layer))
        columns["head"].append(index[1].cpu().numpy())
        columns["query"].append(top.query[index].cpu().numpy())
        columns["key"].append(top.key[index].cpu().numpy())
        weights.append(top.weight[index].cpu().numpy())
        dropped += int(top.above.sum()) - int(kept.sum())
    joined = {
        name: np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        for name, parts in columns.items()
    }
    weight = np.concatenate(weights) if weights else np.zeros(0)
    if weight.size > SPARSE_MAX_TOTAL:  # the span's budget: only the largest weights of all heads
        largest = np.argpartition(-weight, SPARSE_MAX_TOTAL - 1)[:SPARSE_MAX_TOTAL]
        dropped += weight.size - SPARSE_MAX_TOTAL
        joined = {name: values[largest] for name, values in joined.items()}
        weight = weight[largest]
    order = np.lexsort(tuple(joined[name] for name in ("key", "query", "head", "layer", "prompt")))
    prefix = "corevital.prompt.positions.attention"
    arrays = {f"{prefix}.{name}": values[order] for name, values in joined.items()}
    arrays[f"{prefix}.weight"] = weight[order]
    arrays[f"{prefix}.dropped"] = dropped
    return arrays


def _host(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().astype(np.float64)


def _per_prompt(values: np.ndarray, reduce: str) -> np.ndarray:
    """Reduce each prompt's ``(prompts, ...)`` entries to one value, skipping non-finite ones."""
    return finite_reduce(values.reshape(values.shape[0], -1).T, reduce)


@dataclass
class PromptMeasures:
    """The prompt's statistics, still on the model's device: measured during generation (the prompt
    internals are only alive then) and moved to the host after it, so the prompt costs no host sync."""

    count: int
    length: int
    layers: int
    surprisal: torch.Tensor | None
    transformation: torch.Tensor
    basins: list[torch.Tensor]
    tops: list[_SparseTop | None]
    attention_queries: int  # query positions the attention statistics used


def measure(
    prompt: PromptCapture,
    thresholds: Thresholds,
    detail: bool,
    surprisal: bool = True,
    attention_queries: int = DEFAULT_ATTENTION_QUERIES,
) -> PromptMeasures | None:
    """Device-side prompt statistics; sparse attention is only gathered with ``detail``, per-position
    surprisal only with ``surprisal`` (it runs the output head over the whole prompt); attention
    statistics over at most ``attention_queries`` evenly spaced query positions."""
    rows = prompt_rows(prompt)
    if rows is None:
        return None
    layers = len(prompt.hidden_states)
    tops: list[_SparseTop | None] = []
    basins: list[torch.Tensor] = []
    thirds: dict[range, tuple[torch.Tensor, ...]] = {}
    queries = sampled_queries(rows.length, attention_queries)
    work: dict[str, torch.Tensor] = {}
    for layer in range(layers):
        top = _SparseTop(thresholds.prompt_sparse_max_per_head, thresholds.prompt_sparse_threshold, work=work)
        basin = layer_attention(prompt, layer, rows, top if detail else None, thirds, queries)
        if basin is None:
            break  # attention of some layer was not captured: basin scores would be incomplete
        basins.append(basin)
        tops.append(top)
    work.clear()
    return PromptMeasures(
        rows.count,
        rows.length,
        layers,
        prompt_surprisal(prompt, rows) if surprisal else None,
        layer_transformation(prompt, rows),
        basins,
        tops,
        len(queries),
    )


def attributes(measures: PromptMeasures, detail: bool) -> dict[str, Any]:
    """Every prompt attribute from the measures (host side); per-position arrays only with ``detail``."""
    values: dict[str, Any] = {}
    if measures.surprisal is not None:
        bits = _host(measures.surprisal)
        values["corevital.prompt.surprisal.mean"] = _per_prompt(bits, "mean")
        values["corevital.prompt.surprisal.max"] = _per_prompt(bits, "max")
        if detail:
            values["corevital.prompt.positions.surprisal"] = bits
    transformation = _host(measures.transformation)
    values["corevital.prompt.layer_transformation.mean"] = _per_prompt(transformation, "mean")
    if detail:
        values["corevital.prompt.positions.layer_transformation"] = transformation
        values["corevital.layers.prompt.layer_transformation"] = finite_reduce(
            transformation.transpose(2, 0, 1), "mean"
        )
    basins = [_host(basin) for basin in measures.basins]
    heads = basins[0].shape[1] if basins else 0
    values["corevital.prompt.shape"] = [measures.count, measures.layers, heads, measures.length]
    values["corevital.prompt.attention_queries"] = measures.attention_queries
    if len(basins) == measures.layers and basins:
        basin_scores = np.stack(basins, axis=1)  # (prompts, layers, heads)
        values["corevital.prompt.basin_score.mean"] = _per_prompt(basin_scores, "mean")
        values["corevital.prompt.basin_score.min"] = _per_prompt(basin_scores, "min")
        if detail:
            values["corevital.layers.prompt.basin_score"] = basin_scores
            values.update(_sparse_arrays(measures.tops))
    return values


def analyse(prompt: PromptCapture, thresholds: Thresholds, detail: bool) -> dict[str, Any]:
    """Every prompt attribute at once (measure, then move to the host)."""
    measures = measure(prompt, thresholds, detail)
    return {} if measures is None else attributes(measures, detail)


@hookimpl
def corevital_generation_start(info: GenerationInfo) -> None:
    # Prompt surprisal costs the output head over every prompt position (prompt × vocab × width: on
    # GPT-2-small, 128 tokens cost as much as a few generated tokens), so it is opt-in.
    settings = _options.settings(info.options, COREVITAL_PLUGIN_NAME, PromptOptions)
    queries = settings.get("attention_queries", DEFAULT_ATTENTION_QUERIES)
    if isinstance(queries, bool) or not isinstance(queries, int) or queries < 1:
        raise ValueError(
            f"plugin_options['prompt']['attention_queries'] must be a positive integer, not {queries!r}"
        )
    info.state[COREVITAL_PLUGIN_NAME] = {
        "thresholds": thresholds_for(info),
        "measures": None,
        "surprisal": bool(settings.get("surprisal")),
        "attention_queries": queries,
    }


@hookimpl
def corevital_prompt(info: GenerationInfo, prompt: PromptCapture) -> None:
    state = info.state[COREVITAL_PLUGIN_NAME]
    with torch.no_grad():
        state["measures"] = measure(
            prompt, state["thresholds"], wants_detail(info), state["surprisal"], state["attention_queries"]
        )


@hookimpl
def corevital_summarize(info: GenerationInfo, results: GenerationResults) -> None:
    measures = info.state.get(COREVITAL_PLUGIN_NAME, {}).get("measures")
    if measures is not None:
        results.attributes.update(attributes(measures, wants_detail(info)))
