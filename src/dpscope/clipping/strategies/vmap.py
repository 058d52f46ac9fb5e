"""vmap: torch.func per-sample gradients (functional_call + grad + vmap), in chunks.

Works for any pure model, no rules needed. Memory is bounded by processing at most
VMAP_CHUNK_ELEMENTS per-example gradient entries at a time (each example's norm depends only on
its own gradient, so chunks are independent).
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

VMAP_CHUNK_ELEMENTS = 2**25  # per-example gradient entries per chunk (128 MB in float32)


def per_example_grad_chunks(
    model: nn.Module,
    loss_fn: Callable,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    params: dict[str, nn.Parameter],
    rows_per_example: int = 1,
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Yield ({name: (b, *shape)}, losses (b,)) chunk by chunk; an example of K rows has the
    gradient of the mean loss over them."""
    trainable = {n: p.detach() for n, p in params.items()}
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in params}
    buffers = dict(model.named_buffers())

    def one_example(weights, x, y):  # x: (K, ...) the example's rows
        out = functional_call(model, (weights, frozen, buffers), (x,))
        loss = loss_fn(out, y).mean()
        return loss, loss.detach()

    per_example = vmap(grad(one_example, has_aux=True), in_dims=(None, 0, 0), randomness="different")
    numel = max(1, sum(p.numel() for p in params.values()))
    chunk = max(1, VMAP_CHUNK_ELEMENTS // numel)
    inputs = inputs.reshape(-1, rows_per_example, *inputs.shape[1:])  # (B, K, ...)
    targets = targets.reshape(-1, rows_per_example, *targets.shape[1:])
    for start in range(0, inputs.shape[0], chunk):
        grads, losses = per_example(trainable, inputs[start : start + chunk], targets[start : start + chunk])
        yield grads, losses
