"""Dataset / ImageSplit behaviour: normalisation from training statistics, vectorised batches."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dpscope.data import ImageSplit, load_npz
from dpscope.data.dataset import channel_mean_std
from dpscope.errors import DataError

from data_test_helpers import small_medmnist_arrays


@pytest.fixture
def rgb_dataset(write_npz):
    return load_npz(write_npz("rgb.npz", base=small_medmnist_arrays(rgb=True, side=6)))


def test_statistics_are_those_of_the_training_images_only(write_npz):
    arrays = small_medmnist_arrays(rgb=True, side=6)
    dataset = load_npz(write_npz("a.npz", base=arrays))
    pixels = arrays["train_images"].astype(np.float64) / 255.0  # (N, H, W, 3)
    np.testing.assert_allclose(dataset.mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(dataset.std, pixels.std(axis=(0, 1, 2)), rtol=1e-12)
    arrays["val_images"] = np.full_like(arrays["val_images"], 255)
    arrays["test_images"] = np.zeros_like(arrays["test_images"])
    assert load_npz(write_npz("b.npz", base=arrays)).mean == dataset.mean


def test_constant_channel_gets_unit_std():
    mean, std = channel_mean_std(torch.full((3, 1, 2, 2), 51, dtype=torch.uint8), 255.0)
    assert mean == pytest.approx((0.2,)) and std == (1.0,)


def test_normalize_matches_the_formula(rgb_dataset):
    images = rgb_dataset.test.images
    expected = (images.double() / 255.0 - torch.tensor(rgb_dataset.mean).view(1, 3, 1, 1)) / torch.tensor(
        rgb_dataset.std
    ).view(1, 3, 1, 1)
    out = rgb_dataset.normalize(images)
    assert out.dtype == torch.float32 and out.shape == images.shape
    torch.testing.assert_close(out, expected.float())


def test_normalised_training_images_have_zero_mean_unit_std(rgb_dataset):
    out = rgb_dataset.normalize(rgb_dataset.train.images).double()
    mean, std = out.mean(dim=(0, 2, 3)), out.std(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean, torch.zeros(3, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(std, torch.ones(3, dtype=torch.float64), atol=1e-6, rtol=0)


def test_batch_equals_normalising_each_example_alone(rgb_dataset):
    indices = torch.tensor([5, 0, 5, 11])
    inputs, labels = rgb_dataset.batch(rgb_dataset.train, indices)
    for row, i in enumerate(indices.tolist()):
        torch.testing.assert_close(inputs[row], rgb_dataset.normalize(rgb_dataset.train.images[i : i + 1])[0])
        assert labels[row] == rgb_dataset.train.labels[i]
    assert labels.dtype == torch.int64


def test_splits_store_uint8_images_and_int64_labels(rgb_dataset):
    for split in (rgb_dataset.train, rgb_dataset.val, rgb_dataset.test):
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
    assert (rgb_dataset.in_channels, rgb_dataset.image_size) == (3, 6)
    assert rgb_dataset.class_names == ("0", "1", "2") and rgb_dataset.num_classes == 3


def test_channels_last_rgb_is_transposed_not_reshaped(write_npz):
    arrays = small_medmnist_arrays(rgb=True, side=6)
    dataset = load_npz(write_npz("c.npz", base=arrays))
    np.testing.assert_array_equal(dataset.train.images[2, 1].numpy(), arrays["train_images"][2, :, :, 1])


def test_float_images_in_unit_range_are_scaled_to_255(write_npz):
    arrays = small_medmnist_arrays()
    floats = arrays["train_images"].astype(np.float32) / 255.0
    dataset = load_npz(write_npz("f.npz", base=arrays, train_images=floats))
    np.testing.assert_array_equal(dataset.train.images[:, 0].numpy(), arrays["train_images"])


def test_labels_given_as_flat_vector_load(write_npz):
    arrays = small_medmnist_arrays()
    dataset = load_npz(write_npz("v.npz", base=arrays, val_labels=arrays["val_labels"][:, 0].astype(np.int32)))
    np.testing.assert_array_equal(dataset.val.labels.numpy(), arrays["val_labels"][:, 0])


def test_subset_keeps_order_and_groups():
    split = ImageSplit(
        torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 1, 2, 2).clone(),
        torch.arange(5) * 10,
        torch.arange(5) % 2,
    )
    part = split.subset([4, 1])
    assert len(part) == 2 and part.labels.tolist() == [40, 10] and part.groups.tolist() == [0, 1]
    assert part.images[:, 0, 0, 0].tolist() == [4, 1]


def test_split_with_wrong_types_is_refused():
    with pytest.raises(DataError, match="uint8"):
        ImageSplit(torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(DataError, match="labels must be an int64"):
        ImageSplit(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))


def test_dataset_refuses_inconsistent_fields(rgb_dataset):
    with pytest.raises(DataError, match="class names"):
        dataclasses.replace(rgb_dataset, class_names=("only one",))
    with pytest.raises(DataError, match="one value per channel"):
        dataclasses.replace(rgb_dataset, mean=(0.5,))
    with pytest.raises(DataError, match="val images"):
        grey = ImageSplit(torch.zeros(1, 1, 6, 6, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64))
        dataclasses.replace(rgb_dataset, val=grey)


def _devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
def test_dataset_moved_to_a_device_gives_the_same_batches_there(rgb_dataset, device):
    moved = rgb_dataset.to(device)
    assert moved.train.images.device.type == device and moved.train.images.dtype == torch.uint8
    inputs, labels = moved.batch(moved.train, torch.tensor([3, 1]))
    expected_inputs, expected_labels = rgb_dataset.batch(rgb_dataset.train, torch.tensor([3, 1]))
    assert inputs.device.type == device
    torch.testing.assert_close(inputs.cpu(), expected_inputs)
    assert torch.equal(labels.cpu(), expected_labels)
