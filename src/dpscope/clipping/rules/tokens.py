"""Parameters added to (or prepended to) the activations: ViT class token and position embedding.

For out = x + P with P broadcast over the batch (and any other axis where P has size 1), the
per-example gradient is the output gradient summed over the broadcast axes. A class token is
the same with the token "added" to an extra leading position: its gradient is the output
gradient at position 0.
"""

from __future__ import annotations

import torch
from torch import nn

from dpscope.clipping.registry import Grads, LayerRule


def broadcast_add_grad(param: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    """Per-example gradient (B, *param.shape) of `param` broadcast-added to an output (B, ...)."""
    batch = grad_output.shape[0]
    shape = (1,) * (grad_output.dim() - param.dim()) + tuple(param.shape)
    dims = tuple(i for i, (p, g) in enumerate(zip(shape, grad_output.shape)) if p == 1 and i > 0)
    summed = grad_output.sum(dims, keepdim=True) if dims else grad_output
    return summed.reshape(batch, *param.shape)


def position_embedding_grads(layer: nn.Module, a: torch.Tensor, d: torch.Tensor) -> Grads:
    return {"embedding": broadcast_add_grad(layer.embedding, d)}


def class_token_grads(layer: nn.Module, a: torch.Tensor, d: torch.Tensor) -> Grads:
    return {"token": broadcast_add_grad(layer.token, d[:, :1])}


def rules() -> dict[type[nn.Module], LayerRule]:
    """Rules for dpscope.models' token modules (models does not import clipping: no cycle)."""
    from dpscope.models.vit import ClassToken, PositionEmbedding

    return {
        PositionEmbedding: LayerRule("position_embedding", position_embedding_grads),
        ClassToken: LayerRule("class_token", class_token_grads),
    }
