"""Helpers shared by the data tests (a module of its own: `conftest` is not importable by name
when several test folders have one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_NPZ = Path(__file__).resolve().parents[3] / "shared" / "data" / "pneumoniamnist.npz"
_SKIP_REASON = f"shared PneumoniaMNIST not present at {SHARED_NPZ} (the ../shared/data folder of this setup)"


def needs_shared_npz(test):
    """Mark a test as using ../shared/data and skip it, saying why, where the file is absent."""
    return pytest.mark.shared_data(pytest.mark.skipif(not SHARED_NPZ.is_file(), reason=_SKIP_REASON)(test))


def small_medmnist_arrays(
    *, sizes=(12, 4, 6), side=8, rgb=False, num_classes=3, seed=0
) -> dict[str, np.ndarray]:
    """Valid MedMNIST-layout arrays: uint8 images (N, H, W[, 3]), labels (N, 1) covering every class."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes):
        shape = (n, side, side, 3) if rgb else (n, side, side)
        arrays[f"{split}_images"] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % num_classes).astype(np.uint8)[:, None]
    return arrays
