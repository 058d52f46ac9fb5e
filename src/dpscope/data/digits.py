"""scikit-learn's bundled 8x8 handwritten digits: the embedded default that needs no download.

1797 grey images, 10 classes. The pixels are counts 0-16 (of an original 32x32 bitmap's 4x4
blocks); they are rescaled to 0-255 (value * 255 / 16, rounded; the 17 levels stay distinct)
so every dataset shares one pixel range, the one input perturbation assumes. There is no
official split: a stratified 70 / 10 / 20 % train / val / test split is drawn from `seed`.
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits

from dpscope.data.assemble import make_dataset
from dpscope.data.dataset import Dataset
from dpscope.data.splits import stratified_split

FRACTIONS = (0.7, 0.1, 0.2)  # train, val, test
_RAW_MAX = 16.0


def load_digits_dataset(seed: int = 0) -> Dataset:
    bunch = load_digits()
    images = torch.from_numpy(bunch.images).mul(255.0 / _RAW_MAX).round().to(torch.uint8)  # (N, 8, 8)
    images = images.unsqueeze(1)  # (N, 1, 8, 8)
    labels = torch.from_numpy(bunch.target).to(torch.int64)
    parts = stratified_split(labels, FRACTIONS, seed)
    splits = {name: (images[index], labels[index]) for name, index in zip(("train", "val", "test"), parts)}
    return make_dataset(
        "digits",
        f"scikit-learn load_digits (bundled), stratified 70/10/20 split, seed {seed}",
        splits,
        tuple(str(d) for d in range(10)),
    )
