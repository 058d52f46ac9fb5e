"""Per-example kernel gradients of 1-d and 2-d convolutions (groups 1), or only their squared
norms, on the CPU by the C kernel in `dpscope.native` (see there for why); None wherever it
does not apply, and the conv rule then uses torch ops.

The kernel reads the padded input and the output gradient channels-last; for channels-last
tensors (the cnn on the CPU) those are views, otherwise one copy of each. Its
result is kernel-major, handed back as a permuted view in the weight's shape. With several
torch threads the batch is split among as many Python threads (ctypes releases the GIL).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch

from dpscope import native
from dpscope.clipping.rules._conv_patches import Conv, padded

_FUNCTIONS = {torch.float32: "dpscope_conv2d_grads_f32", torch.float64: "dpscope_conv2d_grads_f64"}
_MIN_EXAMPLES_PER_THREAD = 8
_pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="dpscope-native")  # idle: no threads


def applies(layer: Conv, a: torch.Tensor) -> bool:
    return (a.device.type == "cpu" and a.dtype in _FUNCTIONS and layer.groups == 1
            and len(layer.kernel_size) <= 2 and native.library() is not None)


def per_example_grads(layer: Conv, a: torch.Tensor, d: torch.Tensor) -> torch.Tensor | None:
    """(B, *layer.weight.shape) per-example kernel gradients, or None (see module docstring)."""
    return _run(layer, a, d, norms_only=False) if applies(layer, a) else None


def per_example_sq_norms(layer: Conv, a: torch.Tensor, d: torch.Tensor) -> torch.Tensor | None:
    """(B,) squared norms of the per-example kernel gradients, which are formed block by block
    in registers and never stored; None where the kernel does not apply."""
    return _run(layer, a, d, norms_only=True) if applies(layer, a) else None


def _run(layer: Conv, a: torch.Tensor, d: torch.Tensor, norms_only: bool) -> torch.Tensor:
    x = padded(layer, a)
    kernel, stride, dilation = layer.kernel_size, layer.stride, layer.dilation
    if len(kernel) == 1:  # a 1-d convolution is a 2-d one of height 1
        x, d = x.unsqueeze(2), d.unsqueeze(2)
        kernel, stride, dilation = (1, *kernel), (1, *stride), (1, *dilation)
    x = x.permute(0, 2, 3, 1).contiguous()  # (B, Hp, Wp, C): a view when channels-last
    d = d.permute(0, 2, 3, 1).contiguous().to(x.dtype)  # (B, OH, OW, O)
    batch, height, width, channels = x.shape
    _, out_h, out_w, out_channels = d.shape
    for size, out, k, s, dil in zip((height, width), (out_h, out_w), kernel, stride, dilation):
        if out > 0 and (out - 1) * s + (k - 1) * dil >= size:  # never let the kernel read out of bounds
            raise ValueError(f"output size {out} does not fit input {size}, kernel {k}, stride {s}, dilation {dil}")
    if channels != layer.in_channels or out_channels != layer.out_channels or d.shape[0] != batch:
        raise ValueError(f"shapes {tuple(x.shape)} and {tuple(d.shape)} do not match {layer}")
    fn = getattr(native.library(), _FUNCTIONS[x.dtype])
    shape = (height, width, channels, out_h, out_w, out_channels, *kernel, *stride, *dilation)
    if norms_only:
        sq = x.new_empty(batch)
        _in_threads(lambda sl: fn(x[sl].data_ptr(), d[sl].data_ptr(), None, sq[sl].data_ptr(),
                                  sl.stop - sl.start, *shape), batch)
        return sq
    grads = x.new_empty(batch, *kernel, channels, out_channels)
    _in_threads(lambda sl: fn(x[sl].data_ptr(), d[sl].data_ptr(), grads[sl].data_ptr(), None,
                              sl.stop - sl.start, *shape), batch)
    grads = grads.permute(0, 4, 3, 1, 2)  # (B, O, C, KH, KW)
    return grads.squeeze(3) if len(layer.kernel_size) == 1 else grads


def _in_threads(run, batch: int) -> None:
    """run(slice) over the batch, in up to torch.get_num_threads() threads."""
    threads = max(1, min(torch.get_num_threads(), batch // _MIN_EXAMPLES_PER_THREAD))
    bounds = [batch * k // threads for k in range(threads + 1)]
    slices = [slice(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]
    if len(slices) <= 1:
        for sl in slices:
            run(sl)
        return
    for future in [_pool.submit(run, sl) for sl in slices]:
        future.result()
