"""A block's logits arrive as one reference per step and are stacked only when read; its attention may
arrive as logits, and its weights are then computed only when read."""

from __future__ import annotations

import pytest
import torch

from corevital_otel.capture.records import PerStep, StepBlock


def _block(parts: list[torch.Tensor], checked: list[int] | None = None) -> StepBlock:
    def check(seen) -> None:
        if checked is not None:
            checked.append(len(seen))

    return StepBlock(
        start=0,
        steps=len(parts),
        rows=parts[0].shape[0],
        logits=PerStep(parts, check),
        hidden=None,
        attention=None,
        attention_keys=None,
        chosen=None,
    )


def test_questions_about_the_logits_do_not_stack_them() -> None:
    checked: list[int] = []
    block = _block([torch.randn(2, 5) for _ in range(3)], checked)
    assert block.has_logits
    assert block.logit_step_shape == (2, 5)
    assert block.device == torch.device("cpu")
    assert checked == []  # nothing read, nothing stacked


def test_logits_are_stacked_once_when_read_and_equal_the_steps() -> None:
    checked: list[int] = []
    parts = [torch.randn(2, 5) for _ in range(3)]
    block = _block(parts, checked)
    assert torch.equal(block.logits, torch.stack(parts))
    assert block.logits is block.logits  # stacked once
    assert checked == [3]


def test_a_window_stacks_only_its_steps_into_the_given_buffer() -> None:
    parts = [torch.randn(2, 5) for _ in range(4)]
    block = _block(parts)
    buffer = torch.empty(2, 2, 5)
    window = block.logits_window(slice(1, 3), out=buffer)
    assert window.data_ptr() == buffer.data_ptr()
    assert torch.equal(window, torch.stack(parts[1:3]))
    # Once stacked whole, a window is a view of the stacked tensor.
    assert torch.equal(block.logits_window(slice(1, 3)), block.logits[1:3])


def test_half_precision_logits_are_read_as_float32() -> None:
    parts = [torch.randn(1, 4).half() for _ in range(2)]
    block = _block(parts)
    assert block.logits_window(slice(0, 2), out=torch.empty(2, 1, 4)).dtype == torch.float32
    assert block.logits.dtype == torch.float32
    assert torch.equal(block.logits, torch.stack(parts).float())


def test_the_check_runs_before_anything_is_read() -> None:
    def changed(parts) -> None:
        raise RuntimeError("changed in place")

    block = StepBlock(0, 1, 1, PerStep([torch.zeros(1, 3)], changed), None, None, None, None)
    with pytest.raises(RuntimeError, match="changed in place"):
        block.logits_window(slice(0, 1))
    with pytest.raises(RuntimeError, match="changed in place"):
        _ = block.logits


def test_a_block_without_logits() -> None:
    block = StepBlock(0, 1, 1, None, None, None, None, torch.zeros(1, 1, dtype=torch.long))
    assert not block.has_logits
    assert block.logits is None
    assert block.logit_step_shape is None
    assert block.logits_window(slice(0, 1)) is None
    assert block.device == torch.device("cpu")  # from the chosen tokens


def test_attention_handed_as_logits_is_their_softmax_computed_once_when_read() -> None:
    logits = torch.randn(3, 2, 1, 4, 7)  # (steps, layers, rows, heads, keys)
    logits[..., 5:] = torch.finfo(torch.float32).min  # keys the rows may not attend to
    block = _block([torch.randn(1, 5) for _ in range(3)])
    block.attention_logits = logits
    # Questions about the attention compute nothing.
    assert block.has_attention
    assert block.held_attention() is logits
    assert vars(block)["_attention"] is None
    weights = block.attention
    torch.testing.assert_close(weights, torch.softmax(logits, dim=-1), rtol=0, atol=0)
    assert torch.count_nonzero(weights[..., 5:]) == 0
    assert block.attention is weights  # computed once
    assert torch.equal(block.step(1).attention, weights[1])


def test_a_block_without_attention_says_so() -> None:
    block = _block([torch.randn(1, 5)])
    assert not block.has_attention
    assert block.held_attention() is None
    assert block.attention is None


def test_a_step_of_a_block_handed_logits_computes_no_weights_until_read() -> None:
    """A ``corevital_step`` plugin that never reads attention costs no softmax; one that does gets its
    step's weights, and a block rebuilt from such steps still holds logits."""
    logits = torch.randn(3, 2, 1, 4, 7)
    block = _block([torch.randn(1, 5) for _ in range(3)])
    block.attention_logits = logits
    step = block.step(1)
    assert vars(block)["_attention"] is None and vars(step)["_attention"] is None
    torch.testing.assert_close(step.attention, torch.softmax(logits[1], dim=-1), rtol=0, atol=0)
    assert vars(block)["_attention"] is None  # the step's own softmax, not the block's
    rebuilt = StepBlock.of_steps([block.step(0), block.step(1)])
    assert torch.equal(rebuilt.attention_logits, logits[:2])
    assert vars(rebuilt)["_attention"] is None
