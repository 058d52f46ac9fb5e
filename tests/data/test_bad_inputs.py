"""Every kind of broken dataset file gives one DataError that names the file and the problem."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from dpscope.data import load_dataset, load_npz
from dpscope.errors import DataError


def _load_error(path) -> str:
    with pytest.raises(DataError) as info:
        load_npz(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_missing_file(tmp_path):
    assert "file not found" in _load_error(tmp_path / "absent.npz")


def test_missing_file_given_as_dataset_path(tmp_path):
    with pytest.raises(DataError, match="absent.npz: file not found"):
        load_dataset(str(tmp_path / "absent.npz"))


def test_file_that_is_not_a_zip(tmp_path):
    path = tmp_path / "text.npz"
    path.write_text("these are not images\n")
    assert "not a .npz (zip) archive" in _load_error(path)


def test_truncated_file(write_npz):
    path = write_npz()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "corrupt or truncated" in _load_error(path)


def test_bad_crc(write_npz, tmp_path):
    path = write_npz()
    with zipfile.ZipFile(path) as archive:  # find where train_images' stored bytes begin
        info = archive.getinfo("train_images.npy")
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + 200] ^= 0xFF  # flip one pixel byte in the (uncompressed) member
    path.write_bytes(bytes(data))
    message = _load_error(path)
    assert "BadZipFile" in message and "CRC" in message


def test_missing_keys_are_listed(write_npz):
    message = _load_error(write_npz(val_labels=None, test_images=None))
    assert "missing keys val_labels, test_images" in message
    assert "train_images" in message  # what was found


def test_label_outside_class_range_of_a_known_dataset(write_npz):
    arrays = {"train_labels": np.array([[0], [1], [2], [1]] * 3, dtype=np.uint8)}
    path = write_npz("pneumoniamnist.npz", **arrays)  # 2 classes: label 2 is out of range
    message = _load_error(path)
    assert "3 labels outside the class range 0-1 (e.g. 2)" in message and "train" in message


def test_negative_label(write_npz):
    labels = np.array([0, 1, -1, 2] * 3, dtype=np.int64)
    assert "labels outside the class range" in _load_error(write_npz(train_labels=labels))


def test_images_of_inconsistent_shape_across_splits(write_npz):
    path = write_npz(val_images=np.zeros((4, 10, 10), dtype=np.uint8))
    assert "val images are (1, 10, 10)" in _load_error(path)


def test_non_square_images(write_npz):
    path = write_npz(train_images=np.zeros((12, 8, 6), dtype=np.uint8))
    assert "8x6 pixels; they must be square" in _load_error(path)


def test_images_and_labels_of_different_lengths(write_npz):
    assert "11 labels" in _load_error(write_npz(train_labels=np.zeros(11, dtype=np.uint8)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_pixels(write_npz, bad):
    images = np.full((12, 8, 8), 0.5, dtype=np.float32)
    images[3, 2, 1] = bad
    message = _load_error(write_npz(train_images=images))
    assert "[train_images]" in message and "1 NaN or infinite" in message


def test_nan_labels(write_npz):
    labels = np.zeros(12, dtype=np.float64)
    labels[0] = np.nan
    assert "[train_labels]" in _load_error(write_npz(train_labels=labels))


def test_empty_split(write_npz):
    empty_images, empty_labels = np.zeros((0, 8, 8), dtype=np.uint8), np.zeros((0, 1), dtype=np.uint8)
    path = write_npz(test_images=empty_images, test_labels=empty_labels)
    assert "test split is empty" in _load_error(path)


def test_string_dtype_cannot_be_converted(write_npz):
    message = _load_error(write_npz(val_labels=np.array(["a", "b", "c", "d"])))
    assert "[val_labels]" in message and "cannot be converted" in message


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "objects.npz"
    objects = np.array([object()] * 2, dtype=object)
    np.savez(path, **{f"{split}_{part}": objects for split in ("train", "val", "test") for part in ("images", "labels")})
    assert "pickled Python objects" in _load_error(path)


def test_pixels_beyond_8_bits(write_npz):
    images = np.full((12, 8, 8), 4095, dtype=np.uint16)
    assert "up to 4095" in _load_error(write_npz(train_images=images))


def test_fractional_labels(write_npz):
    assert "not whole numbers" in _load_error(write_npz(train_labels=np.full(12, 0.5)))


def test_multi_label_arrays_are_refused(write_npz):
    assert "multi-label" in _load_error(write_npz(train_labels=np.zeros((12, 14), dtype=np.uint8)))


def test_unknown_name_lists_datasets_and_folders(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("nosuchset", data_dir=tmp_path)
    assert "digits" in str(info.value) and str(tmp_path) in str(info.value)


def test_every_split_empty_in_an_unnamed_file(write_npz):
    empty = {f"{split}_{part}": np.zeros((0, 8, 8) if part == "images" else (0,), dtype=np.uint8)
             for split in ("train", "val", "test") for part in ("images", "labels")}
    assert "train split is empty" in _load_error(write_npz("blank.npz", base=empty))
