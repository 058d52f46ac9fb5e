"""nn.Linear on vectors (B, p) or sequences (B, ..., p).

Per example i with positions t: grad W_i = sum_t d_it a_it^T, grad b_i = sum_t d_it.
Ghost norm (no (B, q, p) tensor): ||a_i||^2 ||d_i||^2 for vectors (Lee & Kifer 2021),
<A_i A_i^T, D_i D_i^T> for sequences (Li et al. 2022). The weighted sum is one matrix product
over all (example, position) rows with the output gradients scaled by w_i (Bu et al. 2023).
"""

from __future__ import annotations

import torch
from torch import nn

from dpscope.clipping.registry import Grads, LayerRule
from dpscope.clipping.rules._common import MATERIALIZED_ENTRY_COST, sequence_ghost_sq_norm


def _as_sequences(layer: nn.Linear, a: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    batch = a.shape[0]
    return a.reshape(batch, -1, layer.in_features), d.reshape(batch, -1, layer.out_features)  # (B, T, p), (B, T, q)


def per_example_grads(layer: nn.Linear, a: torch.Tensor, d: torch.Tensor) -> Grads:
    a, d = _as_sequences(layer, a, d)
    grads = {"weight": torch.bmm(d.transpose(1, 2), a)}  # (B, q, p)
    if layer.bias is not None:
        grads["bias"] = d.sum(1)
    return grads


def ghost_sq_norms(layer: nn.Linear, a: torch.Tensor, d: torch.Tensor) -> Grads:
    a, d = _as_sequences(layer, a, d)
    norms = {"weight": sequence_ghost_sq_norm(a, d)}
    if layer.bias is not None:
        norms["bias"] = d.sum(1).square().sum(1)
    return norms


def weighted_grad_sum(layer: nn.Linear, a: torch.Tensor, d: torch.Tensor, weights: Grads) -> Grads:
    a, d = _as_sequences(layer, a, d)
    sums = {}
    if "weight" in weights:
        scaled = d * weights["weight"][:, None, None]
        sums["weight"] = scaled.reshape(-1, layer.out_features).t() @ a.reshape(-1, layer.in_features)
    if "bias" in weights and layer.bias is not None:
        sums["bias"] = weights["bias"] @ d.sum(1)
    return sums


def costs(layer: nn.Linear, a: torch.Tensor, d: torch.Tensor) -> tuple[float, float]:
    tokens = a.numel() // max(1, a.shape[0] * layer.in_features)
    p, q = layer.in_features, layer.out_features
    ghost_norm = p + q if tokens == 1 else tokens * tokens * (p + q)
    return float(ghost_norm + tokens * p * q), float(tokens * p * q + MATERIALIZED_ENTRY_COST * p * q)


RULE = LayerRule("linear", per_example_grads, ghost_sq_norms, weighted_grad_sum, costs, rows_as_positions=True)
