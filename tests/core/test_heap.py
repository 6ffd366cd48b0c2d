"""When the capture hands freed heap memory back: only after resident memory grew by the allowed amount."""

from __future__ import annotations

import pytest

from corevital_otel.capture import heap

MIB = 2**20


@pytest.fixture
def trims(monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], list[int]]:
    """A fake ``malloc_trim`` and a scripted resident size: (calls made, resident sizes to report)."""
    calls: list[int] = []
    resident: list[int] = []
    monkeypatch.setattr(heap, "_TRIM", lambda pad: calls.append(pad) or 1)
    monkeypatch.setattr(heap, "resident_bytes", lambda: resident[0])
    monkeypatch.setattr(heap, "_POLICY", heap._TrimPolicy())
    return calls, resident


def test_no_trim_until_resident_memory_grew_by_the_allowance(trims: tuple[list[int], list[int]]) -> None:
    calls, resident = trims
    big = heap.TRIM_FROM_BYTES
    resident[:] = [500 * MIB]
    assert heap.release_freed_memory(big) is False  # the first fold sets the baseline
    resident[0] = 500 * MIB + heap.TRIM_AFTER_GROWTH_BYTES - 1
    assert heap.release_freed_memory(big) is False
    resident[0] = 500 * MIB + heap.TRIM_AFTER_GROWTH_BYTES
    assert heap.release_freed_memory(big) is True
    assert calls == [0]
    # The trim's result is the new baseline: growth is counted from there.
    resident[0] = 520 * MIB + heap.TRIM_AFTER_GROWTH_BYTES - 1
    assert heap.release_freed_memory(big) is False
    assert calls == [0]


def test_a_lower_resident_size_lowers_the_baseline(trims: tuple[list[int], list[int]]) -> None:
    calls, resident = trims
    big = heap.TRIM_FROM_BYTES
    resident[:] = [500 * MIB]
    heap.release_freed_memory(big)
    resident[0] = 400 * MIB  # something else freed memory
    heap.release_freed_memory(big)
    resident[0] = 400 * MIB + heap.TRIM_AFTER_GROWTH_BYTES
    assert heap.release_freed_memory(big) is True
    assert calls == [0]


def test_small_folds_never_trim(trims: tuple[list[int], list[int]]) -> None:
    calls, resident = trims
    resident[:] = [1]
    heap.release_freed_memory(heap.TRIM_FROM_BYTES)
    resident[0] = 10 * heap.TRIM_AFTER_GROWTH_BYTES
    assert heap.release_freed_memory(heap.TRIM_FROM_BYTES - 1) is False
    assert calls == []


def test_resident_bytes_reads_this_process() -> None:
    resident = heap.resident_bytes()
    if resident is None:
        pytest.skip("no /proc/self/statm on this platform: the capture never trims there")
    assert resident > 10 * MIB  # at least the interpreter and torch
