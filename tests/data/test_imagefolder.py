"""Image folders: class names from folders, optional split folders, clear errors per file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dpscope.data import load_dataset, load_imagefolder
from dpscope.errors import DataError


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def _class_images(root: Path, classes=("cat", "dog"), per_class=10, side=6, rgb=False, suffix=".png"):
    """Images whose pixels encode (class, index), so loaded images can be traced to files."""
    for c, name in enumerate(classes):
        for i in range(per_class):
            value = np.uint8(100 * c + 5 * i)
            shape = (side, side, 3) if rgb else (side, side)
            _save(root / name / f"{i:02d}{suffix}", np.full(shape, value, dtype=np.uint8))


def test_flat_folder_is_split_stratified_and_keeps_pixels(tmp_path):
    _class_images(tmp_path / "pets")
    (tmp_path / "pets" / "dog" / "notes.txt").write_text("ignored: not an image")
    dataset = load_dataset(str(tmp_path / "pets"), seed=3)
    assert dataset.class_names == ("cat", "dog") and dataset.name == "pets"
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (14, 2, 4)
    assert (dataset.in_channels, dataset.image_size) == (1, 6)
    for split in (dataset.train, dataset.val, dataset.test):
        assert torch.bincount(split.labels, minlength=2).tolist() == [len(split) // 2] * 2
        values = split.images[:, 0, 0, 0].long()
        assert torch.equal(values // 100, split.labels)  # each image sits under its own class
    everything = torch.cat([dataset.train.images, dataset.val.images, dataset.test.images])
    assert sorted(everything[:, 0, 0, 0].tolist()) == sorted(100 * c + 5 * i for c in (0, 1) for i in range(10))
    assert torch.equal(load_imagefolder(tmp_path / "pets", seed=3).train.images, dataset.train.images)


def test_split_folders_are_used_and_val_carved_from_train_when_absent(tmp_path):
    _class_images(tmp_path / "train", per_class=10, rgb=True, suffix=".jpg")
    _class_images(tmp_path / "test", per_class=3, rgb=True)
    dataset = load_dataset("imagefolder", data_dir=tmp_path)
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (18, 2, 6)
    assert dataset.in_channels == 3
    _class_images(tmp_path / "val", per_class=2, rgb=True)
    assert len(load_imagefolder(tmp_path).val) == 4


def test_one_colour_image_makes_all_images_rgb(tmp_path):
    _class_images(tmp_path, per_class=10)
    _save(tmp_path / "dog" / "rgba.png", np.zeros((6, 6, 4), dtype=np.uint8) + 7)  # alpha dropped
    dataset = load_imagefolder(tmp_path)
    assert dataset.in_channels == 3
    grey = dataset.train.images[dataset.train.images[:, 0, 0, 0] != 7]
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])


def test_image_of_another_size_is_named(tmp_path):
    _class_images(tmp_path, per_class=4)
    _save(tmp_path / "dog" / "big.png", np.zeros((9, 9), dtype=np.uint8))
    with pytest.raises(DataError, match=r"big\.png: image is 9x9 but .* is 6x6"):
        load_imagefolder(tmp_path)


def test_unreadable_image_is_named(tmp_path):
    _class_images(tmp_path, per_class=4)
    (tmp_path / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"broken\.png: not a readable image"):
        load_imagefolder(tmp_path)


def test_sixteen_bit_images_are_refused(tmp_path):
    _class_images(tmp_path, per_class=4)
    _save(tmp_path / "cat" / "deep.png", np.full((6, 6), 4000, dtype=np.uint16))
    with pytest.raises(DataError, match=r"deep\.png: image mode I"):
        load_imagefolder(tmp_path)


def test_train_without_test_folder_is_refused(tmp_path):
    _class_images(tmp_path / "train", per_class=4)
    with pytest.raises(DataError, match="train/ but no test/"):
        load_imagefolder(tmp_path)


def test_test_class_unknown_to_train_is_refused(tmp_path):
    _class_images(tmp_path / "train", per_class=4)
    _class_images(tmp_path / "test", classes=("cat", "bird"), per_class=2)
    with pytest.raises(DataError, match=r"bird: class folder not among the training classes \(cat, dog\)"):
        load_imagefolder(tmp_path)


def test_missing_or_empty_folders(tmp_path):
    with pytest.raises(DataError, match="image folder not found"):
        load_imagefolder(tmp_path / "absent")
    with pytest.raises(DataError, match="no class subfolders"):
        load_imagefolder(tmp_path)
    (tmp_path / "cat").mkdir()
    with pytest.raises(DataError, match="no training images"):
        load_imagefolder(tmp_path)
    with pytest.raises(DataError, match="needs data_dir"):
        load_dataset("imagefolder")
