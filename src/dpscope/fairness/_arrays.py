"""Array input shared by the fairness modules: numpy, torch or lists, (N,) or (N, 1)."""

from __future__ import annotations

from typing import Any

import numpy as np

from dpscope.errors import DataError


def as_1d(values: Any, name: str) -> np.ndarray:
    """A 1-D numpy view of labels, predictions or groups; MedMNIST's (N, 1) labels included."""
    array = np.asarray(values.cpu() if hasattr(values, "cpu") else values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise DataError(f"{name} must be 1-D (N,) or (N, 1), got shape {array.shape}")
    return array
