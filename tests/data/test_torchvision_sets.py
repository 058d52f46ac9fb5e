"""torchvision datasets are optional: without torchvision the error says how to get it."""

from __future__ import annotations

import importlib.util

import pytest

from dpscope.data import DATASETS, load_dataset
from dpscope.errors import DataError


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed here")
@pytest.mark.parametrize("name", ["mnist", "fashionmnist", "cifar10"])
def test_missing_torchvision_gives_an_install_hint(name):
    assert name in DATASETS
    with pytest.raises(DataError, match=r"needs torchvision.*pip install 'dpscope\[vision\]'"):
        load_dataset(name)

