"""Per-example kernel gradients of 1-d and 2-d convolutions (groups 1), or only their squared
norms, on the CPU by the C kernels in `dpscope.native` (see there for why); None wherever they
do not apply, and the conv rule then uses torch ops.

Two kernels, both for any stride, dilation and padding. `conv_rows.c` takes tensors in torch's
own NCHW layout, zero padding included, and returns gradients in the weight's layout; it
vectorises along output rows, so it needs at least ROWS_MIN_POSITIONS positions per example
(see `by_rows`). `conv_grads.c` reads the padded input and the output gradient channels-last: views for
channels-last tensors (the cnn on the CPU), otherwise one copy of each; its kernel-major result
is handed back as a permuted view in the weight's shape. With several torch threads the batch
is split among as many Python threads (ctypes releases the GIL).
"""

from __future__ import annotations

import torch

from dpscope import native
from dpscope.clipping.rules._conv_patches import Conv, channels_last, padded, pads

_FUNCTIONS = {torch.float32: "dpscope_conv2d_grads_f32", torch.float64: "dpscope_conv2d_grads_f64"}
_ROWS_FUNCTIONS = {torch.float32: "dpscope_conv2d_rows_f32", torch.float64: "dpscope_conv2d_rows_f64"}
# Where the rows kernel is used: each tap's sum ends in a sum across vector lanes, which small
# maps do not amortise, and from 128 channels the channels-last kernel's wider tiles and Gram
# norms mostly win. Measured on one thread (session 17, 3x3 stride 1, float32) against the path
# taken without it: at batch 428, 16 channels at 28 px 14.0-15.0 ms against 34.1 and the 1 -> 16
# stem 2.3 against 10.2; at batch 256, 16 channels won from 8 px, 32 from 12 px (8.4 against
# 14.0), 64 tied at 10-12 px and won at 14 (50.9 against 57.5), lost at 6-8 px (26-32 against
# 24-28); 128 channels lost at 6-12 px (up to 1.2x slower), won at 14 and 20 px (batch 256 and
# 128) and lost at 16 px at batch 32 (20.8 against 19.8 ms).
ROWS_MIN_POSITIONS = 160  # output rows x padded row length, per example
ROWS_MAX_CHANNELS = 64


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


def by_rows(layer: Conv, a: torch.Tensor, d: torch.Tensor) -> bool:
    """The rows kernel applies and is the faster kernel: groups 1, neither tensor channels-last,
    enough positions (output rows x row length of a stride phase) and at most ROWS_MAX_CHANNELS
    channels."""
    if (layer.groups != 1 or channels_last(a) or channels_last(d)
            or max(layer.in_channels, layer.out_channels) > ROWS_MAX_CHANNELS):
        return False
    height = 1 if d.dim() == 3 else d.shape[2]
    padded_width = sum(pads(layer)[-1]) + a.shape[-1]
    return height * -(-padded_width // layer.stride[-1]) >= ROWS_MIN_POSITIONS


def _run(layer: Conv, a: torch.Tensor, d: torch.Tensor, norms_only: bool) -> torch.Tensor:
    if by_rows(layer, a, d):
        return _run_rows(layer, a, d, norms_only)
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
    _check_channels(layer, x.shape, d.shape, channel_axis=-1)
    fn = getattr(native.library(), _FUNCTIONS[x.dtype])
    shape = (height, width, channels, out_h, out_w, out_channels, *kernel, *stride, *dilation)
    if norms_only:
        sq = x.new_empty(batch)
        native.in_threads(lambda sl: fn(x[sl].data_ptr(), d[sl].data_ptr(), None, sq[sl].data_ptr(),
                                        sl.stop - sl.start, *shape), batch)
        return sq
    grads = x.new_empty(batch, *kernel, channels, out_channels)
    native.in_threads(lambda sl: fn(x[sl].data_ptr(), d[sl].data_ptr(), grads[sl].data_ptr(), None,
                                    sl.stop - sl.start, *shape), batch)
    grads = grads.permute(0, 4, 3, 1, 2)  # (B, O, C, KH, KW)
    return grads.squeeze(3) if len(layer.kernel_size) == 1 else grads


def _check_channels(layer: Conv, x_shape: torch.Size, d_shape: torch.Size, channel_axis: int) -> None:
    """The kernels index by these sizes: they must be the layer's, and one batch."""
    if (x_shape[channel_axis] != layer.in_channels or d_shape[channel_axis] != layer.out_channels
            or x_shape[0] != d_shape[0]):
        raise ValueError(f"shapes {tuple(x_shape)} and {tuple(d_shape)} do not match {layer}")


def _run_rows(layer: Conv, a: torch.Tensor, d: torch.Tensor, norms_only: bool) -> torch.Tensor:
    """The rows kernel: zero padding is applied by the kernel, other modes by torch first."""
    zeros = layer.padding_mode == "zeros"
    x = (a if zeros else padded(layer, a)).contiguous()
    d = d.contiguous().to(x.dtype)
    before = [p[0] for p in pads(layer)] if zeros else [0] * len(layer.kernel_size)
    after = [p[1] for p in pads(layer)] if zeros else [0] * len(layer.kernel_size)
    kernel, dilation, stride = layer.kernel_size, layer.dilation, layer.stride
    if len(kernel) == 1:  # a 1-d convolution is a 2-d one of height 1
        x, d = x.unsqueeze(2), d.unsqueeze(2)
        kernel, dilation, stride = (1, *kernel), (1, *dilation), (1, *stride)
        before, after = [0, *before], [0, *after]
    batch, channels, height, width = x.shape
    _, out_channels, out_h, out_w = d.shape
    padded_size = (height + before[0] + after[0], width + before[1] + after[1])
    fits = [(size - dil * (k - 1) - 1) // s + 1 for size, dil, k, s in zip(padded_size, dilation, kernel, stride)]
    if [out_h, out_w] != fits:
        raise ValueError(f"output size {(out_h, out_w)} does not fit input {(height, width)} of {layer}")
    _check_channels(layer, x.shape, d.shape, channel_axis=1)
    fn = getattr(native.library(), _ROWS_FUNCTIONS[x.dtype])
    shape = (channels, height, width, out_channels, out_h, out_w, *kernel, before[0], before[1],
             *padded_size, *dilation, *stride)
    sq = x.new_empty(batch) if norms_only else None
    grads = None if norms_only else x.new_empty(batch, *layer.weight.shape)

    def run(sl: slice) -> None:
        status = fn(x[sl].data_ptr(), d[sl].data_ptr(), None if grads is None else grads[sl].data_ptr(),
                    None if sq is None else sq[sl].data_ptr(), sl.stop - sl.start, *shape)
        if status == -1:
            raise MemoryError(f"the rows kernel could not allocate its staging planes for {layer}")
        if status != 0:
            raise ValueError(f"the rows kernel refused the sizes of {layer} (status {status})")

    native.in_threads(run, batch)
    return sq if norms_only else grads
