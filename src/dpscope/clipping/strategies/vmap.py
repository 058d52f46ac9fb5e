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
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Yield ({name: (b, *shape)}, losses (b,)) chunk by chunk."""
    trainable = {n: p.detach() for n, p in params.items()}
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in params}
    buffers = dict(model.named_buffers())

    def one_example(weights, x, y):
        out = functional_call(model, (weights, frozen, buffers), (x.unsqueeze(0),))
        loss = loss_fn(out, y.unsqueeze(0)).sum()
        return loss, loss.detach()

    per_example = vmap(grad(one_example, has_aux=True), in_dims=(None, 0, 0), randomness="different")
    numel = max(1, sum(p.numel() for p in params.values()))
    chunk = max(1, VMAP_CHUNK_ELEMENTS // numel)
    for start in range(0, inputs.shape[0], chunk):
        grads, losses = per_example(trainable, inputs[start : start + chunk], targets[start : start + chunk])
        yield grads, losses
