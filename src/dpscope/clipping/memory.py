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

import torch

# Bytes of per-example scratch (unfolded patches, stored per-example gradients) formed at once.
# CPU: 2 MB slices fit the holes the backward leaves in the heap, so this scratch does not set
# the step's peak (whole-layer blocks grew RSS to 1.7x non-private on vit_tiny at batch 64,
# where the live bytes were 1.25x; unfolding took 38 MB, 20 % of the peak, on a WRN-16-4 layer
# at batch 32), at the same step time as 8 MB slices. CUDA: the caching allocator has no such
# holes and every slice is kernel launches; 2 MB slices made ResNet-18 at batch 128 run one
# example per slice on its 512-channel layers (an H100 step took 221 ms against Opacus's 63,
# with other work on the machine). 256 MB.
SLICE_BYTES = {"cpu": 2**21, "cuda": 2**28}


# Per-example gradients formed without scratch (the convolution C kernel), to be kept for the
# stored sum anyway, come in slices of up to this many bytes: each slice is one more call, norm
# and weighted sum, and the cnn's second convolution at batch 428 (14 MB) in 2 MB slices made the
# private step 1.9 ms slower (one thread, session 16).
STORED_SLICE_BYTES = 2**24


def slice_bytes(device: torch.device, scratch_free: bool = False) -> int:
    """How many bytes of per-example scratch to form at once on `device` (see SLICE_BYTES);
    `scratch_free`: of per-example gradients formed without scratch (STORED_SLICE_BYTES)."""
    limit = SLICE_BYTES["cuda" if device.type == "cuda" else "cpu"]
    return max(limit, STORED_SLICE_BYTES) if scratch_free else limit

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
