"""Small helpers shared by the layer rules."""

from __future__ import annotations

import torch

# Above this many (T x T) entries per chunk, ghost norms are computed in batch chunks so their
# memory stays bounded (2**24 floats = 64 MB in float32).
GHOST_CHUNK_ELEMENTS = 2**24

# `costs` of a rule compare whole paths per example, in multiply-adds: ghost norm + weighted
# contraction, against materialisation + norm + stored sum. A materialised per-example gradient
# entry is written once and read twice, memory-bound: on 2 CPU cores it costs about as much as
# this many multiply-adds (fitted so the choice matches measured times on CIFAR ResNet / WRN
# convolutions and ViT linears: the crossover lies between 18 and 44).
MATERIALIZED_ENTRY_COST = 24


def sequence_ghost_sq_norm(a: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """||D_i^T A_i||_F^2 for every i, as <A_i A_i^T, D_i D_i^T> (Li et al. 2022).

    a: (B, T, p), d: (B, T, q) -> (B,). For T == 1 it is ||a_i||^2 ||d_i||^2 (Lee & Kifer).
    Chunked over the batch so the (chunk, T, T) Gram matrices stay under GHOST_CHUNK_ELEMENTS.
    """
    batch, tokens = a.shape[0], a.shape[1]
    if tokens == 1:
        return a.square().sum((1, 2)) * d.square().sum((1, 2))
    chunk = max(1, GHOST_CHUNK_ELEMENTS // (tokens * tokens))
    out = a.new_empty(batch)
    for start in range(0, batch, chunk):
        sl = slice(start, start + chunk)
        gram_a = torch.bmm(a[sl], a[sl].transpose(1, 2))  # (b, T, T)
        gram_d = torch.bmm(d[sl], d[sl].transpose(1, 2))
        out[sl] = (gram_a * gram_d).sum((1, 2))
    return out


def in_memory_order(g: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...] | None]:
    """g (B, ...) with its dims after the batch permuted into memory order (a view), and the
    permutation that undoes it (None: g is already contiguous, or no permutation makes it so).

    Rules may hand back per-example gradients as permuted views of the layout they were formed
    in (a channels-last convolution's are kernel-major); reducing them in memory order spares a
    copy of B times the layer's size.
    """
    if g.is_contiguous():
        return g, None
    order = sorted(range(1, g.dim()), key=g.stride, reverse=True)
    base = g.permute(0, *order)
    if not base.is_contiguous():
        return g, None
    return base, tuple(sorted(range(g.dim() - 1), key=lambda k: order[k]))


def flat_sq_norm(g: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B,) squared L2 norm of each example's slice."""
    base, _ = in_memory_order(g)
    return torch.linalg.vector_norm(base.reshape(base.shape[0], -1), dim=1).square()


def weighted_example_sum(g: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i w_i g_i for g (B, *shape) and w (B,) -> (*shape), as one matrix-vector product."""
    base, undo = in_memory_order(g)
    total = torch.mv(base.reshape(base.shape[0], -1).t(), weights).reshape(base.shape[1:])
    return total if undo is None else total.permute(undo).contiguous()
