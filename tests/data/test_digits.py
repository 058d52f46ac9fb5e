"""The embedded default: scikit-learn digits with a seeded stratified split."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits

from dpscope.data import load_dataset


def test_split_is_stratified_disjoint_and_complete():
    dataset = load_dataset("digits")
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (1258, 180, 359)
    assert dataset.class_names == tuple("0123456789") and dataset.num_classes == 10
    assert (dataset.in_channels, dataset.image_size, dataset.pixel_max) == (1, 8, 255.0)
    total = np.bincount(load_digits().target, minlength=10)
    for split, fraction in ((dataset.train, 0.7), (dataset.val, 0.1), (dataset.test, 0.2)):
        counts = torch.bincount(split.labels, minlength=10).numpy()
        assert np.all(np.abs(counts - fraction * total) <= 1)


def test_images_are_sklearn_pixels_rescaled_from_16_to_255():
    bunch = load_digits()
    dataset = load_dataset("digits")
    images = torch.cat([dataset.train.images, dataset.val.images, dataset.test.images]).double()
    labels = torch.cat([dataset.train.labels, dataset.val.labels, dataset.test.labels])
    # every loaded image is one of sklearn's, with its label
    rescaled = np.rint(bunch.images * 255 / 16).astype(np.uint8)
    reference = {(img.tobytes(), int(t)) for img, t in zip(rescaled, bunch.target)}
    loaded = {(img.to(torch.uint8).numpy().tobytes(), int(t)) for img, t in zip(images, labels)}
    assert loaded <= reference and len(images) == len(bunch.images)
    assert int(images.max()) == 255


def test_same_seed_same_split_other_seed_other_split():
    first, again, other = (load_dataset("digits", seed=s) for s in (0, 0, 1))
    assert torch.equal(first.train.images, again.train.images) and first.mean == again.mean
    assert not torch.equal(first.train.images, other.train.images)
    assert len(first.train) == len(other.train)
