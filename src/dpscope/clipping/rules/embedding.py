"""nn.Embedding (with padding_idx; not scale_grad_by_freq, which mixes examples, nor sparse).

Per example i, grad E_i = sum_t onehot(x_it) d_it^T; rows at padding_idx get no gradient.
Ghost norm: sum_{t,s} [x_it == x_is] <d_it, d_is>, which never forms the (B, V, dim) tensor.
"""

from __future__ import annotations

import torch
from torch import nn

from dpscope.clipping.registry import Grads, LayerRule
from dpscope.clipping.rules._common import MATERIALIZED_ENTRY_COST
from dpscope.errors import UnsupportedLayerError


def _flat(layer: nn.Embedding, idx: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if layer.scale_grad_by_freq or layer.sparse:
        raise UnsupportedLayerError(
            "nn.Embedding with scale_grad_by_freq or sparse=True has no exact per-example rule "
            "(the first mixes examples); construct it with both set to False"
        )
    batch = idx.shape[0]
    idx = idx.reshape(batch, -1)  # (B, T)
    d = d.reshape(batch, -1, layer.embedding_dim)  # (B, T, dim)
    if layer.padding_idx is not None:
        d = d * (idx != layer.padding_idx).unsqueeze(-1).to(d.dtype)
    return idx, d


def per_example_grads(layer: nn.Embedding, idx: torch.Tensor, d: torch.Tensor) -> Grads:
    idx, d = _flat(layer, idx, d)
    grads = d.new_zeros(idx.shape[0], layer.num_embeddings, layer.embedding_dim)
    grads.scatter_add_(1, idx.unsqueeze(-1).expand_as(d), d)
    return {"weight": grads}


def ghost_sq_norms(layer: nn.Embedding, idx: torch.Tensor, d: torch.Tensor) -> Grads:
    idx, d = _flat(layer, idx, d)
    same = (idx.unsqueeze(2) == idx.unsqueeze(1)).to(d.dtype)  # (B, T, T)
    return {"weight": (same * torch.bmm(d, d.transpose(1, 2))).sum((1, 2))}


def weighted_grad_sum(layer: nn.Embedding, idx: torch.Tensor, d: torch.Tensor, weights: Grads) -> Grads:
    idx, d = _flat(layer, idx, d)
    scaled = (d * weights["weight"][:, None, None]).reshape(-1, layer.embedding_dim)
    total = d.new_zeros(layer.num_embeddings, layer.embedding_dim)
    return {"weight": total.index_add_(0, idx.reshape(-1), scaled)}


def costs(layer: nn.Embedding, idx: torch.Tensor, d: torch.Tensor) -> tuple[float, float]:
    tokens = idx[0].numel() if idx.shape[0] else 1
    dim = layer.embedding_dim
    return float(tokens * tokens * dim + tokens * dim), float(tokens * dim + MATERIALIZED_ENTRY_COST * layer.num_embeddings * dim)


RULE = LayerRule("embedding", per_example_grads, ghost_sq_norms, weighted_grad_sum, costs, rows_as_positions=True)
