"""Batched random augmentations on image tensors, with augmentation multiplicity.

    augmenter = BatchAugmenter.from_spec("crop,flip", multiplicity=8, seed=0)   # or "crop:2"
    rows, row_targets = augmenter(images, targets)   # (B, C, H, W) -> (B*8, C, H, W)

Augmentation multiplicity (De et al. 2022, "Unlocking high-accuracy differentially private image
classification through scale"): every example of a logical batch is augmented K times and its
gradient is the MEAN of its K copies' gradients, formed before clipping (the clipping engine's
`rows_per_example=K`). One example still moves the clipped sum by at most C, and the sampler
draws examples, not copies, so the privacy accounting is exactly that of plain DP-SGD.

Rows come out example-major: rows i*K .. i*K+K-1 are example i's copies. Every draw is one
tensor operation over the whole batch (no loop over images), from a seeded generator whose
state is saved with the checkpoint, so a resumed run continues with the same augmentations.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from dpscope.errors import ConfigError

AUGMENTATIONS: tuple[str, ...] = ("crop", "flip")
# Random-crop shift in pixels each way, from reflect-padded images (De et al. 2022 pad 4 px on
# CIFAR-10's 32 px images; on 28 px images that is at most a 14 % shift).
CROP_PADDING_PX = 4


def parse_augment(spec: str) -> tuple[tuple[str, ...], int]:
    """"crop", "crop,flip" or "crop:2,flip" (crop padding in px, default CROP_PADDING_PX; any
    order, no repeats) -> (names in AUGMENTATIONS order, crop padding in px)."""
    parts = [part.strip() for part in spec.split(",") if part.strip()]
    names = [part.split(":")[0] for part in parts]
    padding = [part.split(":", 1)[1] for part in parts if part.startswith("crop:")]
    unknown = [p for p, n in zip(parts, names) if n not in AUGMENTATIONS or (":" in p and n != "crop")]
    if not names or unknown or len(set(names)) != len(names) or not all(p.isdigit() and int(p) > 0 for p in padding):
        raise ConfigError(f"augment must be a comma-separated subset of {', '.join(AUGMENTATIONS)}, crop "
                          f"optionally with its padding in px (e.g. crop,flip or crop:2), got {spec!r}")
    return tuple(n for n in AUGMENTATIONS if n in names), int(padding[0]) if padding else CROP_PADDING_PX


def format_augment(augmentations: tuple[str, ...], crop_padding_px: int) -> str:
    """The canonical spec: parse_augment(format_augment(*parse_augment(s))) == parse_augment(s)."""
    return ",".join(f"crop:{crop_padding_px}" if a == "crop" and crop_padding_px != CROP_PADDING_PX else a
                    for a in augmentations)


def random_crop(images: torch.Tensor, padding_px: int, generator: torch.Generator) -> torch.Tensor:
    """Each image shifted by its own random offset in [-padding_px, padding_px] per axis, the
    uncovered border filled by reflection. (N, C, H, W) -> (N, C, H, W)."""
    n, _, height, width = images.shape
    if n == 0 or padding_px == 0:
        return images
    if padding_px >= min(height, width):
        raise ConfigError(f"crop padding {padding_px} px needs images larger than that, got {height}x{width}")
    padded = F.pad(images, (padding_px,) * 4, mode="reflect")  # (N, C, H+2p, W+2p)
    offsets = torch.randint(0, 2 * padding_px + 1, (2, n), generator=generator).to(images.device)
    rows = offsets[0, :, None] + torch.arange(height, device=images.device)  # (N, H)
    cols = offsets[1, :, None] + torch.arange(width, device=images.device)  # (N, W)
    batch = torch.arange(n, device=images.device)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return cropped.permute(0, 3, 1, 2).contiguous()


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image mirrored left-right with probability 1/2."""
    flip = (torch.rand(images.shape[0], generator=generator) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


class BatchAugmenter:
    """K random augmentations of every example of a batch, from one seeded generator."""

    def __init__(self, augmentations: tuple[str, ...], multiplicity: int = 1, *, seed: int = 0,
                 crop_padding_px: int = CROP_PADDING_PX) -> None:
        if not (isinstance(multiplicity, int) and multiplicity >= 1):
            raise ConfigError(f"augment_multiplicity must be an integer >= 1, got {multiplicity!r}")
        unknown = set(augmentations) - set(AUGMENTATIONS)
        if unknown or not augmentations:
            raise ConfigError(f"augmentations must be a non-empty subset of {AUGMENTATIONS}, got {augmentations}")
        self.augmentations = tuple(augmentations)
        self.multiplicity = multiplicity
        self.crop_padding_px = crop_padding_px
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def from_spec(cls, spec: str, multiplicity: int = 1, *, seed: int = 0) -> "BatchAugmenter":
        augmentations, crop_padding_px = parse_augment(spec)
        return cls(augmentations, multiplicity, seed=seed, crop_padding_px=crop_padding_px)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W), (B,) -> (B*K, C, H, W), (B*K,), example-major."""
        k = self.multiplicity
        rows = images.repeat_interleave(k, dim=0)
        if "crop" in self.augmentations:
            rows = random_crop(rows, self.crop_padding_px, self.generator)
        if "flip" in self.augmentations:
            rows = random_flip(rows, self.generator)
        return rows, targets.repeat_interleave(k, dim=0)

    def describe(self) -> str:
        parts = [f"random crop (reflect padding {self.crop_padding_px} px)" if a == "crop"
                 else "horizontal flip" for a in self.augmentations]
        return f"augmentation: {' + '.join(parts)}, multiplicity K={self.multiplicity}"

    def privacy_statement(self) -> str:
        """What the augmentation does to the guarantee: nothing, and why."""
        return (f"augmentation multiplicity K={self.multiplicity} "
                f"({format_augment(self.augmentations, self.crop_padding_px)}): "
                "each example's gradient is the mean over its K augmented copies, clipped as one, "
                "so the sensitivity stays C and the guarantee is unchanged (q and steps count "
                "examples, not copies)")

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "augmentations": list(self.augmentations),
                "multiplicity": self.multiplicity, "crop_padding_px": self.crop_padding_px}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = (tuple(state["augmentations"]), state["multiplicity"], state["crop_padding_px"])
        if saved != (self.augmentations, self.multiplicity, self.crop_padding_px):
            raise ConfigError(f"the checkpoint's augmentation {saved} differs from the configured "
                              f"{(self.augmentations, self.multiplicity, self.crop_padding_px)}")
        self.generator.set_state(state["generator"])
