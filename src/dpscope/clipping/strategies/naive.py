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
    rows_per_example: int = 1,
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Yield ({name: (1, *shape)}, loss (1,)) for each example in turn; an example of K rows
    has the gradient of the mean loss over them."""
    rows = rows_per_example
    for start in range(0, inputs.shape[0], rows):
        row_losses = loss_fn(model(inputs[start : start + rows]), targets[start : start + rows])
        check_losses(row_losses, rows)
        loss = row_losses.mean()
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        yield (
            {n: (torch.zeros_like(p) if g is None else g).unsqueeze(0) for (n, p), g in zip(params.items(), grads)},
            loss.detach().reshape(1),
        )
