"""Deterministic stratified splits for data that ships without an official one."""

from __future__ import annotations

import numpy as np
import torch


def stratified_split(labels: torch.Tensor, fractions: tuple[float, ...], seed: int) -> list[torch.Tensor]:
    """Indices of len(fractions) disjoint parts that cover all examples, class by class.

    Each class's examples are shuffled with `seed` and cut at the rounded cumulative fractions,
    so every part keeps the class proportions (up to one example per class) and the same seed
    always gives the same parts. Indices in each part are sorted (the original order).
    """
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must sum to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    labels_np = labels.numpy()
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    cumulative = np.cumsum((0.0, *fractions))
    for cls in np.unique(labels_np):
        members = rng.permutation(np.flatnonzero(labels_np == cls))
        cuts = np.rint(cumulative * len(members)).astype(int)
        for part, start, stop in zip(parts, cuts[:-1], cuts[1:]):
            part.append(members[start:stop])
    return [torch.from_numpy(np.sort(np.concatenate(part))).to(torch.int64) for part in parts]
