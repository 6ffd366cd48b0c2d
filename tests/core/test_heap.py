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


def test_a_trim_whose_pages_come_straight_back_doubles_the_allowance(
    trims: tuple[list[int], list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A working set every block needs again (a wide batch's) is left alone after a trim or two."""
    calls, resident = trims
    live = 500 * MIB
    working_set = 3 * heap.TRIM_AFTER_GROWTH_BYTES  # what each block allocates and frees again

    def trim(pad: int) -> int:
        calls.append(pad)
        resident[0] = live  # a real trim: only the live memory stays resident
        return 1

    monkeypatch.setattr(heap, "_TRIM", trim)
    resident[:] = [live]
    heap.release_freed_memory(heap.TRIM_FROM_BYTES)
    trimmed = []
    for _ in range(4):
        resident[0] = live + working_set  # the next block faults its working set back in
        trimmed.append(heap.release_freed_memory(heap.TRIM_FROM_BYTES))
    # At 32 MiB and then 64 MiB the trims were wasted; at 128 MiB the 96 MiB working set stays.
    assert trimmed == [True, True, False, False]
    assert heap._POLICY.allowance == 4 * heap.TRIM_AFTER_GROWTH_BYTES


def test_memory_that_stays_returned_keeps_the_allowance_and_the_cap_holds(
    trims: tuple[list[int], list[int]],
) -> None:
    calls, resident = trims
    big = heap.TRIM_FROM_BYTES
    resident[:] = [500 * MIB]
    heap.release_freed_memory(big)
    resident[0] = 500 * MIB + heap.TRIM_AFTER_GROWTH_BYTES
    assert heap.release_freed_memory(big) is True  # the fake trim returns nothing: resident stays
    heap._POLICY.trimmed(resident[0], 500 * MIB)  # as if it had returned the growth
    resident[0] = 500 * MIB + MIB  # a little growth afterwards: the trim's pages stayed away
    assert heap.release_freed_memory(big) is False
    assert heap._POLICY.allowance == heap.TRIM_AFTER_GROWTH_BYTES
    heap._POLICY.allowance = heap.MAX_ALLOWANCE_BYTES
    heap._POLICY.trimmed(600 * MIB, 500 * MIB)
    resident[0] = 600 * MIB  # came back: would double, but not past the cap
    heap.release_freed_memory(big)
    assert heap._POLICY.allowance == heap.MAX_ALLOWANCE_BYTES
