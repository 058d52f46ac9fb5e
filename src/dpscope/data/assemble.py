"""Checked conversion of raw arrays into a `Dataset`: every loader's last step.

Each check raises one DataError that names where the data came from (file and key, or folder)
and what is wrong, so a user can fix their file without reading a traceback. Conversions:

- images (N, H, W) are grey; (N, H, W, C) with C in {1, 3} is channels-last (MedMNIST, PIL);
  otherwise (N, C, H, W) with C in {1, 3}. Images must be square (the model zoo assumes it).
- integer pixels must lie in [0, 255]; float pixels must be finite and either in [0, 1]
  (scaled by 255) or in [0, 255], and are rounded to uint8.
- labels (N,) or (N, 1), integer-valued; multi-label (N, K > 1) is refused.
"""

from __future__ import annotations

import numpy as np
import torch

from dpscope.data.dataset import Dataset, ImageSplit, channel_mean_std
from dpscope.errors import DataError

SPLITS = ("train", "val", "test")
_CHANNEL_COUNTS = (1, 3)


def _numeric(array: np.ndarray, where: str, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise DataError(f"{where}: {what} have dtype {array.dtype}, which cannot be converted to numbers")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise DataError(f"{where}: {what} contain {bad} NaN or infinite values; fix or drop those entries")
    return array


def images_to_uint8(array: np.ndarray, where: str) -> torch.Tensor:
    """(N, C, H, W) uint8 tensor from grey, channels-last or channels-first pixel arrays."""
    array = _numeric(array, where, "images")
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[-1] in _CHANNEL_COUNTS:
        array = array.transpose(0, 3, 1, 2)
    elif not (array.ndim == 4 and array.shape[1] in _CHANNEL_COUNTS):
        raise DataError(
            f"{where}: images have shape {array.shape}; expected (N, H, W) grey or (N, H, W, C) / "
            "(N, C, H, W) with 1 or 3 channels"
        )
    if array.shape[-1] != array.shape[-2]:
        raise DataError(f"{where}: images are {array.shape[-2]}x{array.shape[-1]} pixels; they must be square")
    if array.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(array))
    if array.size and array.min() < 0:
        raise DataError(f"{where}: images have negative pixel values (min {array.min()}); expected 0-255")
    top = array.max() if array.size else 0
    if array.dtype.kind == "f" and top <= 1.0:
        array = array * 255.0
    elif top > 255:
        raise DataError(
            f"{where}: images have pixel values up to {top}, beyond 0-255; rescale them to 8 bits"
        )
    return torch.from_numpy(np.ascontiguousarray(np.rint(array).astype(np.uint8)))


def labels_to_int64(array: np.ndarray, where: str) -> torch.Tensor:
    """(N,) int64 tensor from (N,) or (N, 1) integer-valued labels."""
    array = _numeric(array, where, "labels")
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise DataError(
            f"{where}: labels have shape {array.shape}; expected (N,) or (N, 1) class indices "
            "(multi-label data is not supported)"
        )
    as_int = array.astype(np.int64)
    if array.dtype.kind == "f" and not np.array_equal(as_int, array):
        raise DataError(f"{where}: labels are not whole numbers; expected class indices")
    return torch.from_numpy(as_int)


def make_dataset(
    name: str,
    source: str,
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
    class_names: tuple[str, ...],
    *,
    pixel_max: float = 255.0,
) -> Dataset:
    """Check the converted splits against each other and the classes, then build the Dataset.

    `splits` maps "train", "val", "test" to (images uint8 NCHW, labels int64). Statistics come
    from the training split only.
    """
    built = {}
    for split in SPLITS:
        images, labels = splits[split]
        if len(images) == 0:
            raise DataError(f"{source}: the {split} split is empty; every split needs at least one image")
        if len(images) != len(labels):
            raise DataError(f"{source}: the {split} split has {len(images)} images but {len(labels)} labels")
        outside = (labels < 0) | (labels >= len(class_names))
        if outside.any():
            raise DataError(
                f"{source}: the {split} split has {int(outside.sum())} labels outside the class range "
                f"0-{len(class_names) - 1} (e.g. {int(labels[outside][0])})"
            )
        if images.shape[1:] != splits["train"][0].shape[1:]:
            raise DataError(
                f"{source}: the {split} images are {tuple(images.shape[1:])} (C, H, W) but the train "
                f"images are {tuple(splits['train'][0].shape[1:])}; all splits must match"
            )
        built[split] = ImageSplit(images, labels)
    mean, std = channel_mean_std(built["train"].images, pixel_max)
    return Dataset(
        name=name,
        source=source,
        **built,
        num_classes=len(class_names),
        class_names=tuple(class_names),
        mean=mean,
        std=std,
        pixel_max=float(pixel_max),
    )
