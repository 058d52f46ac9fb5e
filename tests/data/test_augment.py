"""Batched augmentations: what each draw is, reproducibility, example-major rows, bad specs."""

from __future__ import annotations

import pytest
import torch

from dpscope.data.augment import BatchAugmenter, format_augment, parse_augment, random_crop, random_flip
from dpscope.errors import ConfigError


def images(n: int, channels: int = 2, size: int = 7) -> torch.Tensor:
    return torch.arange(n * channels * size * size, dtype=torch.float32).reshape(n, channels, size, size)


def shifted_reflect(image: torch.Tensor, dy: int, dx: int, pad: int) -> torch.Tensor:
    """One image's crop at offset (dy, dx) of its reflect-padded version, by a plain slice."""
    padded = torch.nn.functional.pad(image[None], (pad,) * 4, mode="reflect")[0]
    return padded[:, dy:dy + image.shape[1], dx:dx + image.shape[2]]


def test_every_crop_is_a_window_of_the_reflect_padded_image():
    x = images(20)
    out = random_crop(x, 3, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    offsets_seen = set()
    for i in range(len(x)):
        matches = [(dy, dx) for dy in range(7) for dx in range(7)
                   if torch.equal(out[i], shifted_reflect(x[i], dy, dx, 3))]
        assert matches, f"image {i} is no window of its padded image"
        offsets_seen.add(matches[0])
    assert len(offsets_seen) > 5  # offsets differ between images


def test_flip_mirrors_about_half_and_leaves_the_rest():
    x = images(400)
    out = random_flip(x, torch.Generator().manual_seed(1))
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert bool((flipped | kept).all())
    assert 150 < int(flipped.sum()) < 250


def test_rows_are_example_major_copies_with_repeated_targets():
    x, y = images(3), torch.tensor([4, 5, 6])
    augmenter = BatchAugmenter(("crop",), multiplicity=4, seed=0, crop_padding_px=2)
    rows, row_targets = augmenter(x, y)
    assert rows.shape == (12, 2, 7, 7)
    assert row_targets.tolist() == [4] * 4 + [5] * 4 + [6] * 4
    for r in range(12):  # every row is a window of its own example
        assert any(torch.equal(rows[r], shifted_reflect(x[r // 4], dy, dx, 2)) for dy in range(5) for dx in range(5))
    assert len({rows[r].sum().item() for r in range(4)}) > 1  # copies of one example differ


def test_same_seed_same_augmentations_and_state_resumes_the_stream():
    x, y = images(8), torch.zeros(8, dtype=torch.long)
    a = BatchAugmenter(("crop", "flip"), 2, seed=3)
    b = BatchAugmenter(("crop", "flip"), 2, seed=3)
    first = a(x, y)[0]
    assert torch.equal(first, b(x, y)[0])
    state = a.state_dict()
    following = a(x, y)[0]
    resumed = BatchAugmenter(("crop", "flip"), 2, seed=99)
    resumed.load_state_dict(state)
    assert torch.equal(resumed(x, y)[0], following)
    assert not torch.equal(following, first)


def test_empty_batch_gives_no_rows():
    rows, targets = BatchAugmenter(("crop", "flip"), 3)(images(0), torch.zeros(0, dtype=torch.long))
    assert rows.shape == (0, 2, 7, 7) and targets.shape == (0,)


@pytest.mark.parametrize("spec, want, canonical", [("crop", (("crop",), 4), "crop"),
                                                   ("flip, crop", (("crop", "flip"), 4), "crop,flip"),
                                                   ("flip,crop:2", (("crop", "flip"), 2), "crop:2,flip")])
def test_parse_augment(spec, want, canonical):
    assert parse_augment(spec) == want
    assert format_augment(*want) == canonical
    assert BatchAugmenter.from_spec(spec).crop_padding_px == want[1]


@pytest.mark.parametrize("spec", ["", "rotate", "crop,crop", "crop,,zoom", "crop:0", "crop:x", "flip:2"])
def test_bad_specs_name_the_choices(spec):
    with pytest.raises(ConfigError, match="crop, flip"):
        parse_augment(spec)


def test_bad_multiplicity_and_too_small_images_are_refused():
    with pytest.raises(ConfigError, match="augment_multiplicity"):
        BatchAugmenter(("crop",), 0)
    with pytest.raises(ConfigError, match="4 px"):
        BatchAugmenter(("crop",), 1)(images(1, size=4), torch.zeros(1))
    with pytest.raises(ConfigError, match="differs"):
        BatchAugmenter(("crop",), 2).load_state_dict(BatchAugmenter(("crop",), 3).state_dict())
