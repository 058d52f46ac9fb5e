"""Keep freed buffers mapped, so per-example buffers are not faulted in again every step.

Per-example gradients are large, short-lived buffers of the same sizes every step. glibc's
malloc returns big freed blocks to the OS (munmap / trim) and the next step faults every page
in again: measured here, 47k-192k page faults per step and 15-25 % of a ResNet step. Raising
malloc's mmap and trim thresholds keeps those blocks in the heap for reuse; peak memory is
unchanged, resident memory between steps stays at the peak. Process-wide and idempotent;
a no-op where glibc is not the allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 2**30
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tune glibc malloc once (see module docstring); True if the allocator accepted it."""
    global _applied
    if _applied is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            _applied = False
        else:
            _applied = bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES)) and bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES))
    return _applied
