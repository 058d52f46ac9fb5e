"""MNIST, Fashion-MNIST and CIFAR-10 through torchvision, an optional extra (`dpscope[vision]`).

torchvision is imported only here and only when one of these is asked for; dpscope never
needs it otherwise. The official training set is split stratified 90 / 10 % into train / val
from `seed`; the official test set is the test split. Files are kept under `data_dir`, else
`$DPSCOPE_DATA`, else the dpscope cache, and downloaded there by torchvision when missing.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import numpy as np

from dpscope.data.assemble import images_to_uint8, labels_to_int64, make_dataset
from dpscope.data.dataset import Dataset
from dpscope.data.locate import download_dir
from dpscope.data.splits import stratified_split
from dpscope.errors import DataError

# name -> torchvision.datasets class name
TORCHVISION_SETS = {"mnist": "MNIST", "fashionmnist": "FashionMNIST", "cifar10": "CIFAR10"}
VAL_FRACTION = 0.1


def load_torchvision(name: str, data_dir: str | Path | None = None, seed: int = 0) -> Dataset:
    if importlib.util.find_spec("torchvision") is None:
        raise DataError(
            f"dataset {name!r} needs torchvision, which is not installed; "
            "run `pip install 'dpscope[vision]'` or use a MedMNIST .npz / image folder instead"
        )
    datasets = importlib.import_module("torchvision.datasets")
    root = download_dir(data_dir)
    try:
        train = getattr(datasets, TORCHVISION_SETS[name])(str(root), train=True, download=True)
        test = getattr(datasets, TORCHVISION_SETS[name])(str(root), train=False, download=True)
    except (OSError, RuntimeError) as error:
        raise DataError(f"{name}: torchvision could not read or download it into {root} ({error})") from None
    where = f"{root} [{name}]"
    images = images_to_uint8(np.asarray(train.data), where)
    labels = labels_to_int64(np.asarray(train.targets), where)
    kept, val = stratified_split(labels, (1.0 - VAL_FRACTION, VAL_FRACTION), seed)
    splits = {
        "train": (images[kept], labels[kept]),
        "val": (images[val], labels[val]),
        "test": (
            images_to_uint8(np.asarray(test.data), where),
            labels_to_int64(np.asarray(test.targets), where),
        ),
    }
    source = f"{root} (torchvision {TORCHVISION_SETS[name]}, 90/10 train/val split, seed {seed})"
    return make_dataset(name, source, splits, tuple(str(c) for c in train.classes))


