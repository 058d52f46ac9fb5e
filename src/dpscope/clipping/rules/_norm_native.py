"""Per-example GroupNorm gradients on the CPU by the C kernel in `dpscope.native`
(`group_norm_sums.c`): one pass over the input and the output gradient, where torch's fused ops
need three (statistics, then the backward). None wherever it does not apply; the norms rule then
uses torch ops."""

from __future__ import annotations

import torch

from dpscope import native

_FUNCTIONS = {torch.float32: "dpscope_group_norm_grads_f32", torch.float64: "dpscope_group_norm_grads_f64"}


def group_norm_grads(a: torch.Tensor, d: torch.Tensor, groups: int, eps: float,
                     weight: bool, bias: bool) -> tuple[torch.Tensor | None, torch.Tensor | None] | None:
    """(B, C) per-example weight and bias gradients (None for those not asked), or None where
    the kernel does not apply (not the CPU, another dtype, no compiler)."""
    if a.device.type != "cpu" or a.dtype not in _FUNCTIONS or native.library() is None:
        return None
    a, d = a.contiguous(), d.contiguous().to(a.dtype)
    batch, channels = a.shape[:2]
    positions = a[0, 0].numel()
    if d.shape != a.shape or channels % groups:
        raise ValueError(f"input {tuple(a.shape)} and output gradient {tuple(d.shape)} do not fit {groups} groups")
    fn = getattr(native.library(), _FUNCTIONS[a.dtype])
    gw = a.new_empty(batch, channels) if weight else None
    gb = a.new_empty(batch, channels) if bias else None

    def run(sl: slice) -> None:
        status = fn(a[sl].data_ptr(), d[sl].data_ptr(), None if gw is None else gw[sl].data_ptr(),
                    None if gb is None else gb[sl].data_ptr(), sl.stop - sl.start, channels, positions, groups, eps)
        if status != 0:
            raise MemoryError("the GroupNorm kernel could not allocate its scratch")

    native.in_threads(run, batch)
    return gw, gb
