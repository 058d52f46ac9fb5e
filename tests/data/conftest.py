"""Fixtures for the data tests: small MedMNIST-layout files written to tmp_path."""

from __future__ import annotations

import numpy as np
import pytest

from data_test_helpers import small_medmnist_arrays


@pytest.fixture
def write_npz(tmp_path):
    """write_npz(name, **changes): a small valid file with keys replaced (or removed if None)."""

    def write(name: str = "tiny.npz", base: dict | None = None, **changes) -> Path:
        arrays = dict(small_medmnist_arrays() if base is None else base)
        for key, value in changes.items():
            if value is None:
                arrays.pop(key)
            else:
                arrays[key] = value
        path = tmp_path / name
        np.savez(path, **arrays)
        return path

    return write
