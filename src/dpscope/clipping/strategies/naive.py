"""naive: one backward per example. Obviously correct and slow: the reference the rest is tested
against (Rochette et al. 2019's "naive")."""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn

from dpscope.clipping.checks import check_losses


def per_example_grad_chunks(
    model: nn.Module,
    loss_fn: Callable,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    params: dict[str, nn.Parameter],
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Yield ({name: (1, *shape)}, loss (1,)) for each example in turn."""
    for i in range(inputs.shape[0]):
        loss = loss_fn(model(inputs[i : i + 1]), targets[i : i + 1])
        check_losses(loss, 1)
        grads = torch.autograd.grad(loss.sum(), list(params.values()), allow_unused=True)
        yield (
            {n: (torch.zeros_like(p) if g is None else g).unsqueeze(0) for (n, p), g in zip(params.items(), grads)},
            loss.detach(),
        )
