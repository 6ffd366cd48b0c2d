"""Hand freed heap memory back to the operating system once it has piled up (glibc on Linux only).

Folding a block allocates temporaries whose size grows with the context (attention rows over every key).
glibc serves them from its heap once it has seen allocations that size freed, and keeps the freed pages
mapped: with ever larger requests interleaved with the small long-lived step series, the process' resident
memory ratchets up (measured: +93 MiB over 4,000 steps of a tiny model, flat with per-step folding).
``malloc_trim`` returns those free pages, but every page it returns that the next fold or the model's next
step needs again is faulted back in: trimming after every fold cost about 1 % of a 56M Llama's decoding
time on a CPU, and a fixed 32 MiB allowance still trimmed after every block of a GPT-2 at batch 4, whose
blocks need more than that (85,000 page faults a call, 2-3 % of its time). So we trim only when resident
memory has grown by an allowance since the last trim, and a trim whose pages came straight back (by the
next fold, half of what it returned is resident again) doubles the allowance, up to
``MAX_ALLOWANCE_BYTES``: the working set every call needs is left alone, memory that keeps growing past it
is still handed back, and a short generation, which never gets there, pays nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable

# Folds whose temporaries stay below this leave nothing large to trim.
TRIM_FROM_BYTES = 128 << 10  # glibc's default mmap threshold: smaller chunks are recycled in its bins
# How far resident memory may grow between two trims, at first; wasted trims double it up to the maximum.
TRIM_AFTER_GROWTH_BYTES = 32 << 20
MAX_ALLOWANCE_BYTES = 1 << 30


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim  # absent from musl and other C libraries
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    """This process' resident memory from ``/proc/self/statm`` (None where there is no such file)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return None


class _TrimPolicy:
    """Process-wide: the resident memory the last trim left (or the lowest seen since), how much growth
    past it is allowed, and what the last trim started from (until the next check judges it)."""

    def __init__(self) -> None:
        self.baseline: int | None = None
        self.allowance = TRIM_AFTER_GROWTH_BYTES
        self.trimmed_from: int | None = None

    def due(self, resident: int) -> bool:
        if self.trimmed_from is not None and self.baseline is not None:
            returned = self.trimmed_from - self.baseline
            if resident - self.baseline >= returned / 2:  # the trim's pages are needed: it was wasted
                self.allowance = min(2 * self.allowance, MAX_ALLOWANCE_BYTES)
            self.trimmed_from = None
        if self.baseline is None or resident < self.baseline:
            self.baseline = resident
        return resident - self.baseline >= self.allowance

    def trimmed(self, before: int, after: int | None) -> None:
        self.trimmed_from, self.baseline = before, after


_POLICY = _TrimPolicy()


def release_freed_memory(folded_bytes: int) -> bool:
    """After a fold that allocated about ``folded_bytes`` on the host, give freed pages back if resident
    memory has grown enough since the last time. Returns whether it trimmed."""
    if _TRIM is None or folded_bytes < TRIM_FROM_BYTES:
        return False
    resident = resident_bytes()
    if resident is None or not _POLICY.due(resident):
        return False
    _TRIM(0)
    _POLICY.trimmed(resident, resident_bytes())
    return True
