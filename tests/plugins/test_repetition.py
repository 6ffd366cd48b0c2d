"""Repetition loops: the online detector against a direct reference, recurring states, and constructed
repetitive versus varied generations through the real pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from corevital_otel.plugins._loops import LoopTracker
from corevital_otel.plugins._profiles import load_profile
from tests.support.plugin_testing import ForceTokens, series_of
from tests.support.tiny_models import build_model

THRESHOLDS = load_profile("default")


def reference_token_loop(tokens: list[int], step: int) -> bool:
    """True when the tokens up to ``step`` end in a literal loop: some period p whose last
    max(p * repeats, min_tokens) tokens (all known) repeat with period p."""
    for period in range(1, THRESHOLDS.repetition_max_period + 1):
        span = max(period * THRESHOLDS.token_loop_min_repeats, THRESHOLDS.token_loop_min_tokens)
        if step + 1 < span:
            continue
        window = tokens[step + 1 - span : step + 1]
        if min(window) >= 0 and all(window[i] == window[i - period] for i in range(period, span)):
            return True
    return False


CPU = torch.device("cpu")


def one_step(tracker: LoopTracker, state, token, rows: int):
    """One step handed over as a block of one: ``(rows,)`` similarity (or None) and evidence."""
    best, evidence = tracker.block(
        None if state is None else state.unsqueeze(0),
        None if token is None else token.unsqueeze(0),
        rows,
        CPU,
    )
    return (None if best is None else best[0]), evidence[0]


def run_tokens(tracker: LoopTracker, tokens: np.ndarray, block: int = 1) -> np.ndarray:
    """Feed ``(steps, rows)`` tokens (-1 = unknown) to the tracker in blocks of ``block`` steps;
    ``(steps, rows)`` token-loop flags."""
    flags = []
    for start in range(0, tokens.shape[0], block):
        chosen = torch.tensor(tokens[start : start + block])
        similarity, evidence = tracker.block(None, chosen, tokens.shape[1], CPU)
        assert similarity is None and set(evidence.flatten().tolist()) <= {0.0, 1.0}  # token evidence only
        flags.append(evidence)
    return torch.cat(flags).numpy()


@st.composite
def token_streams(draw):
    """Rows mixing random stretches, planted loops of several periods and unknown tokens."""
    rows = draw(st.integers(1, 3))
    steps = draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    alphabet = draw(st.integers(2, 6))
    tokens = rng.integers(0, alphabet, (steps, rows))
    for row in range(rows):
        if rng.random() < 0.6:
            period = int(rng.integers(1, 10))
            start = int(rng.integers(0, steps))
            pattern = rng.integers(0, alphabet, period)
            for step in range(start, min(steps, start + int(rng.integers(1, 30)))):
                tokens[step, row] = pattern[(step - start) % period]
        if rng.random() < 0.2:
            tokens[int(rng.integers(0, steps)), row] = -1
    return tokens


@settings(max_examples=60, deadline=None)
@given(token_streams(), st.integers(1, 12))
def test_token_loop_matches_a_direct_reference(tokens, block):
    flags = run_tokens(LoopTracker(THRESHOLDS), tokens, block)
    for row in range(tokens.shape[1]):
        column = tokens[:, row].tolist()
        expected = [reference_token_loop(column, step) for step in range(len(column))]
        assert flags[:, row].astype(bool).tolist() == expected


def test_recurring_states_are_a_loop_and_varied_states_are_not():
    torch.manual_seed(0)
    cycle = torch.randn(3, 1, 16)  # a period-3 cycle of states, slightly noisy
    tracker = LoopTracker(THRESHOLDS)
    state_flags, similarity = [], []
    for step in range(12):
        state = cycle[step % 3] + 1e-4 * torch.randn(1, 16)
        best, evidence = one_step(tracker, state, None, 1)  # tokens unknown: states only
        state_flags.append(evidence.item())
        similarity.append(best.item())
    # Similar at lag 3 from step 3 on; three consecutive such steps make a loop at step 5.
    assert state_flags == [0.0] * 5 + [2.0] * 7  # bit 2: recurring states
    assert np.isnan(similarity[0]) and min(similarity[3:]) > 0.9995
    tracker = LoopTracker(THRESHOLDS)
    varied = [one_step(tracker, torch.randn(1, 16), None, 1)[1] for _ in range(12)]
    assert not any(evidence.item() for evidence in varied)


def test_both_kinds_of_evidence_add_up_as_bit_flags():
    tracker = LoopTracker(THRESHOLDS)
    state, token = torch.randn(1, 16), torch.tensor([5])
    evidence = [one_step(tracker, state, token, 1)[1].item() for _ in range(10)]
    # States repeat at lag 1 from step 1 (3 in a row by step 3); tokens span 8 from step 7.
    assert evidence == [0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0]


def test_buffer_stays_bounded_and_never_leaves_the_plugin():
    tracker = LoopTracker(THRESHOLDS)
    for _ in range(10):
        outputs = tracker.block(torch.randn(5, 2, 16), torch.tensor([[1, 2]] * 5), 2, CPU)
    assert tracker.states.shape == (THRESHOLDS.repetition_max_period, 2, 16)
    assert all(value.shape == (5, 2) for value in outputs)  # only per-step, per-row scalars are returned


@pytest.mark.parametrize("block", [2, 3, 7, 32])
def test_blocks_of_steps_give_what_single_steps_give(block):
    """States and tokens handed over in blocks: similarity and evidence equal to one step at a time."""
    torch.manual_seed(1)
    cycle = torch.randn(3, 2, 16)
    states = torch.stack([cycle[step % 3] + 1e-3 * torch.randn(2, 16) for step in range(40)])
    states[20:] = torch.randn(20, 2, 16)  # the loop ends at step 20
    tokens = torch.tensor([[step % 4, 7] for step in range(40)])
    tokens[11, 0] = -1
    single = LoopTracker(THRESHOLDS)
    expected = [one_step(single, states[i], tokens[i], 2) for i in range(40)]
    blocks = LoopTracker(THRESHOLDS)
    got = [blocks.block(states[i : i + block], tokens[i : i + block], 2, CPU) for i in range(0, 40, block)]
    similarity = torch.cat([best for best, _ in got])
    evidence = torch.cat([flags for _, flags in got])
    assert torch.equal(evidence, torch.stack([flags for _, flags in expected]))
    assert torch.allclose(similarity, torch.stack([best for best, _ in expected]), equal_nan=True, atol=1e-6)
    assert evidence[:20].ne(0).any() and evidence[25:, 0].eq(1).all()  # token loop stays; states stop


def _generate(telemetry, plan: list[int], family: str = "llama"):
    model = build_model(family)
    ids = torch.randint(3, 90, (1, 5), generator=torch.Generator().manual_seed(4))
    model.generate(
        input_ids=ids,
        max_new_tokens=len(plan),
        do_sample=False,
        logits_processor=[ForceTokens(plan, ids.shape[1])],
    )
    return dict(telemetry.generation_spans()[-1].attributes)


def test_a_constructed_repetitive_generation_is_flagged(instrumented):
    telemetry = instrumented(capture_mode="full")
    attributes = _generate(telemetry, [40, 41, 42, 43] + [7, 8, 9] * 5)
    assert attributes["corevital.health.repetition_loop_detected"] is True
    # The period-3 loop starts at step 4 and spans 9 tokens by step 12.
    assert attributes["corevital.health.first_step.repetition_loop_detected"] == 12
    evidence = series_of(attributes, "health.repetition", 1)[0]
    assert evidence[:12].max() == 0.0 and all(int(value) & 1 for value in evidence[12:])  # bit 1: tokens


def test_a_varied_generation_is_not_flagged(instrumented):
    telemetry = instrumented(capture_mode="full")
    attributes = _generate(telemetry, list(range(10, 29)))
    assert attributes["corevital.health.repetition_loop_detected"] is False
    assert np.nanmax(series_of(attributes, "health.state_similarity", 1)) < THRESHOLDS.repetition_similarity
