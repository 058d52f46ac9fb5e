"""Per-example GroupNorm gradients on the CPU by the C kernels in `dpscope.native`
(`group_norm.c`).

`group_norm_grads`: from the layer's input and output gradient, one pass over both, where torch's
fused ops need three (statistics, then the backward). `GroupNormHandingOver`: the layer's forward
as an autograd function whose backward forms the input gradient and the per-example gradients in
one kernel call and hands the latter over (`LayerRule.fused_forward`), so they cost the engine no
pass of their own. None wherever a kernel does not apply; the norms rule then uses torch ops."""

from __future__ import annotations

from typing import Callable

import torch
from torch.autograd.function import once_differentiable

from dpscope import native

_SUMS = {torch.float32: "dpscope_group_norm_grads_f32", torch.float64: "dpscope_group_norm_grads_f64"}
_BACKWARD = {torch.float32: "dpscope_group_norm_backward_f32", torch.float64: "dpscope_group_norm_backward_f64"}

HandOver = Callable[[dict[str, torch.Tensor], torch.Tensor], None]  # (per-example grads, output grad)


def applies(a: torch.Tensor) -> bool:
    """Whether the kernels take this input (CPU, float32/64, kernels built)."""
    return a.device.type == "cpu" and a.dtype in _SUMS and native.library() is not None


def _check(a: torch.Tensor, d: torch.Tensor, groups: int) -> None:
    if d.shape != a.shape or a.shape[1] % groups:
        raise ValueError(f"input {tuple(a.shape)} and output gradient {tuple(d.shape)} do not fit {groups} groups")


def _in_threads(fn, batch: int, pointers: Callable[[slice], list], sizes: list) -> None:
    def run(sl: slice) -> None:
        if fn(*pointers(sl), sl.stop - sl.start, *sizes) != 0:
            raise MemoryError("the GroupNorm kernel could not allocate its scratch")

    native.in_threads(run, batch)


def _ptr(t: torch.Tensor | None, sl: slice | None = None) -> int | None:
    if t is None:
        return None
    return (t if sl is None else t[sl]).data_ptr()


def group_norm_grads(a: torch.Tensor, d: torch.Tensor, groups: int, eps: float,
                     weight: bool, bias: bool) -> tuple[torch.Tensor | None, torch.Tensor | None] | None:
    """(B, C) per-example weight and bias gradients (None for those not asked), or None where
    the kernel does not apply (not the CPU, another dtype, no compiler)."""
    if not applies(a):
        return None
    a, d = a.contiguous(), d.contiguous().to(a.dtype)
    _check(a, d, groups)
    batch, channels = a.shape[:2]
    gw = a.new_empty(batch, channels) if weight else None
    gb = a.new_empty(batch, channels) if bias else None
    _in_threads(getattr(native.library(), _SUMS[a.dtype]), batch,
                lambda sl: [_ptr(a, sl), _ptr(d, sl), _ptr(gw, sl), _ptr(gb, sl)],
                [channels, a[0, 0].numel(), groups, eps])
    return gw, gb


class GroupNormHandingOver(torch.autograd.Function):
    """F.group_norm on (B, C, *) contiguous CPU input whose backward also hands the per-example
    weight and bias gradients to `hand_over` (once: a second backward through the same graph
    only needs the input gradient). The backward's parameter gradients are their batch sums."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups: int, eps: float, hand_over: HandOver):
        batch, channels = x.shape[:2]
        out, mean, rstd = torch.ops.aten.native_group_norm(x, weight, bias, batch, channels,
                                                           x[0, 0].numel(), groups, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.groups, ctx.hand_over, ctx.has_bias = groups, hand_over, bias is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, d):
        x, weight, mean, rstd = ctx.saved_tensors
        d = d.contiguous().to(x.dtype)
        _check(x, d, ctx.groups)
        batch, channels = x.shape[:2]
        dx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        gw = x.new_empty(batch, channels) if weight is not None else None
        gb = x.new_empty(batch, channels) if ctx.has_bias else None
        _in_threads(getattr(native.library(), _BACKWARD[x.dtype]), batch,
                    lambda sl: [_ptr(x, sl), _ptr(d, sl), _ptr(mean, sl), _ptr(rstd, sl), _ptr(weight),
                                _ptr(dx, sl), _ptr(gw, sl), _ptr(gb, sl)],
                    [channels, x[0, 0].numel(), ctx.groups])
        if ctx.hand_over is not None:
            hand_over, ctx.hand_over = ctx.hand_over, None
            hand_over({name: g for name, g in (("weight", gw), ("bias", gb)) if g is not None}, d)
        return (dx, None if gw is None else gw.sum(0), None if gb is None else gb.sum(0), None, None, None)
