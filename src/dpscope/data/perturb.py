"""Input perturbation: private copies of images, each mechanism with a computed guarantee.

Layout: images are (N, C, H, W) arrays of pixel values in [0, pixel_max] (uint8 as the dataset
code stores them; pixel_max is the dataset's full-intensity value, 255 for 8-bit images), numpy
or torch; the result has the input's library. Below, P = pixel_max, the range of one pixel value.
A mechanism is a frozen dataclass of its parameters with three views of one release:

- `noisy(images, seed)`: the mechanism's raw output, float64, unclipped. This is what the
  guarantee is about.
- `apply(images, seed)`: `noisy` clipped to [0, P] and rounded to uint8.
- `apply_float(images, seed)`: `noisy` clipped to [0, P], float32, unrounded.

Clipping and rounding are post-processing of the raw output, so they keep its guarantee.
`guarantee(image_shape)` computes the privacy statement from the parameters and the shape
(sensitivity grows with the pixel count); nothing is assumed.

Noise is drawn in float64 from torch's generator; it is not hardened against floating-point
attacks on the Laplace mechanism (Mironov 2012). It is for research on what perturbation
costs, not for releasing data to adversaries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import dp_accounting
import numpy as np
import torch

from dpscope.errors import ConfigError, DataError
from dpscope.io import write_bytes_atomic, write_json_atomic

__all__ = [
    "MECHANISMS", "DpPix", "Guarantee", "Mechanism", "PaperBrightnessShift", "PixelGaussian",
    "PixelLaplace", "parse_mechanism", "perturb_dataset", "perturb_training_images",
]

PIXEL_MAX = 255.0
"""Largest pixel value; with 0 the smallest, also the range of one pixel value."""

KIND_LDP = "image-level epsilon-LDP"
KIND_APPROX_DP = "(epsilon, delta)-DP per image"
KIND_M_NEIGHBOURHOOD = "m-neighborhood DP (images differing in up to m pixels)"
KIND_NONE = "NOT image-level privacy"

SPLITS = ("train", "val", "test")
_CHUNK_IMAGES = 1024


@dataclass(frozen=True)
class Guarantee:
    """What a mechanism promises, for images of one shape. JSON-ready through `to_dict`."""

    kind: str
    epsilon: float | None
    delta: float | None
    neighbouring: str
    sensitivity: float | None
    sensitivity_norm: str | None
    noise: str
    noise_scale: float
    noise_scale_meaning: str
    image_shape: tuple[int, int, int]
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"image_shape": list(self.image_shape)}


class Mechanism:
    """Base of the perturbation mechanisms: validation, seeding and post-processing."""

    name: ClassVar[str]
    aliases: ClassVar[Mapping[str, str]] = {"eps": "epsilon"}
    training_images_only: ClassVar[bool] = False
    epsilon: float
    pixel_max: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilon", _check_positive("epsilon", self.epsilon, self.name))
        pixel_max = _check_positive("pixel_max", self.pixel_max, self.name)
        if pixel_max > 255:
            raise ConfigError(f"{self.name}: pixel_max must be at most 255 (uint8 images), "
                              f"got {pixel_max}")
        object.__setattr__(self, "pixel_max", pixel_max)

    def guarantee(self, image_shape: Sequence[int]) -> Guarantee:
        raise NotImplementedError

    def _raw(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The unclipped release of float64 images (N, C, H, W)."""
        raise NotImplementedError

    def noisy(self, images: Any, seed: int | torch.Generator) -> Any:
        """Raw float64 output, unclipped: the release the guarantee speaks of."""
        return self._release(images, seed, lambda out: out)

    def apply(self, images: Any, seed: int | torch.Generator) -> Any:
        """Private images as uint8: `noisy` clipped to [0, pixel_max], rounded (post-processing)."""
        return self._release(images, seed, lambda out: self._clip(out).round_().to(torch.uint8))

    def apply_float(self, images: Any, seed: int | torch.Generator) -> Any:
        """Private images as float32: `noisy` clipped to [0, pixel_max] (post-processing)."""
        return self._release(images, seed, lambda out: self._clip(out).to(torch.float32))

    def _clip(self, out: torch.Tensor) -> torch.Tensor:
        return out.clamp_(0.0, self.pixel_max)

    def _release(self, images: Any, seed: int | torch.Generator,
                 post: Callable[[torch.Tensor], torch.Tensor]) -> Any:
        x, to_numpy = _as_float_images(images, self.pixel_max)
        out = post(self._raw(x, _generator(seed)))
        return out.numpy() if to_numpy else out

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def spec(self) -> str:
        """The registry string that rebuilds this mechanism, e.g. `laplace:epsilon=1.0`."""
        return self.name + ":" + ",".join(f"{k}={v!r}" for k, v in self.params().items())


@dataclass(frozen=True)
class PixelLaplace(Mechanism):
    """Laplace noise on every pixel value, calibrated to a whole image's L1 sensitivity.

    Neighbouring images are ANY two images of the shape, so the L1 sensitivity is
    n_values * P (n_values = C*H*W) and the Laplace scale is that over epsilon: true
    image-level epsilon-LDP. At useful epsilons the noise (scale ~2e5 for 28x28 at eps 1)
    destroys the image; that is the honest price of this guarantee.
    """

    epsilon: float
    pixel_max: float = PIXEL_MAX
    name: ClassVar[str] = "laplace"

    def scale(self, image_shape: Sequence[int]) -> float:
        return _n_values(image_shape) * self.pixel_max / self.epsilon

    def guarantee(self, image_shape: Sequence[int]) -> Guarantee:
        shape = _shape3(image_shape)
        return Guarantee(
            kind=KIND_LDP, epsilon=self.epsilon, delta=0.0,
            neighbouring="any two images of shape (C, H, W) = " + str(shape),
            sensitivity=_n_values(shape) * self.pixel_max, sensitivity_norm="L1",
            noise="laplace", noise_scale=self.scale(shape),
            noise_scale_meaning="Laplace scale b per pixel value", image_shape=shape,
        )

    def _raw(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return images + _laplace(images.shape, self.scale(images.shape[1:]), generator)


@dataclass(frozen=True)
class PixelGaussian(Mechanism):
    """Gaussian noise on every pixel value, calibrated to a whole image's L2 sensitivity.

    Neighbouring = any two images, L2 sensitivity sqrt(n_values) * P. The noise standard
    deviation is the analytic Gaussian mechanism's (Balle and Wang 2018), taken from
    dp_accounting for (epsilon, delta); the guarantee's epsilon is recomputed from that
    standard deviation by dp_accounting, not copied from the parameters.
    """

    epsilon: float
    delta: float
    pixel_max: float = PIXEL_MAX
    name: ClassVar[str] = "gaussian"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.delta < 1.0:
            raise ConfigError(f"{self.name}: delta must be in (0, 1), got {self.delta}")

    def sensitivity(self, image_shape: Sequence[int]) -> float:
        return math.sqrt(_n_values(image_shape)) * self.pixel_max

    def noise_std(self, image_shape: Sequence[int]) -> float:
        noise_multiplier = dp_accounting.get_sigma_gaussian(self.epsilon, self.delta)
        return self.sensitivity(image_shape) * noise_multiplier

    def guarantee(self, image_shape: Sequence[int]) -> Guarantee:
        shape = _shape3(image_shape)
        sensitivity = self.sensitivity(shape)
        std = self.noise_std(shape)
        return Guarantee(
            kind=KIND_APPROX_DP,
            epsilon=dp_accounting.get_epsilon_gaussian(std / sensitivity, self.delta),
            delta=self.delta,
            neighbouring="any two images of shape (C, H, W) = " + str(shape),
            sensitivity=sensitivity, sensitivity_norm="L2", noise="gaussian",
            noise_scale=std, noise_scale_meaning="Gaussian standard deviation per pixel value",
            image_shape=shape, note="analytic Gaussian mechanism via dp_accounting",
        )

    def _raw(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(images.shape, generator=generator, dtype=torch.float64)
        return images + noise * self.noise_std(images.shape[1:])


@dataclass(frozen=True)
class DpPix(Mechanism):
    """DP-Pix (Fan 2018): average b x b cells, then Laplace noise on each cell mean.

    Changing up to m pixels (all C channels of each) moves the cell means by at most
    C * P * m / b^2 in L1, so Laplace scale C * P * m / (b^2 * epsilon) gives epsilon-DP
    for images differing in up to m pixels: m-neighbourhood DP, not image-level privacy.
    Each noisy cell mean fills its whole b x b cell. H and W must be multiples of b.
    """

    epsilon: float
    cell_size_px: int = 4
    differing_pixels: int = 1
    pixel_max: float = PIXEL_MAX
    name: ClassVar[str] = "dp_pix"
    aliases: ClassVar[Mapping[str, str]] = {
        "eps": "epsilon", "b": "cell_size_px", "m": "differing_pixels"
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        for field in ("cell_size_px", "differing_pixels"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{self.name}: {field} must be an integer >= 1, got {value!r}")

    def sensitivity(self, image_shape: Sequence[int]) -> float:
        """L1 change of the cell means when up to m pixels (all channels) change."""
        channels, b = _shape3(image_shape)[0], self.cell_size_px
        return channels * self.pixel_max * self.differing_pixels / (b * b)

    def scale(self, image_shape: Sequence[int]) -> float:
        return self.sensitivity(image_shape) / self.epsilon

    def guarantee(self, image_shape: Sequence[int]) -> Guarantee:
        shape = self._check_shape(image_shape)
        return Guarantee(
            kind=KIND_M_NEIGHBOURHOOD, epsilon=self.epsilon, delta=0.0,
            neighbouring=f"images differing in up to m = {self.differing_pixels} pixels",
            sensitivity=self.sensitivity(shape), sensitivity_norm="L1",
            noise="laplace", noise_scale=self.scale(shape),
            noise_scale_meaning=f"Laplace scale b per {self.cell_size_px}x{self.cell_size_px} "
            "cell mean",
            image_shape=shape,
            note="two images differing in more than m pixels may be told apart",
        )

    def _check_shape(self, image_shape: Sequence[int]) -> tuple[int, int, int]:
        shape = _shape3(image_shape)
        b = self.cell_size_px
        if shape[1] % b or shape[2] % b:
            fits = [d for d in range(1, min(shape[1:]) + 1) if shape[1] % d == 0 == shape[2] % d]
            raise ConfigError(
                f"dp_pix: cell_size_px={b} does not divide the image size {shape[1]}x{shape[2]};"
                f" use one of {fits}"
            )
        return shape

    def _raw(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, c, h, w = images.shape
        self._check_shape((c, h, w))
        b = self.cell_size_px
        cells = images.reshape(n, c, h // b, b, w // b, b).mean(dim=(3, 5))  # (N, C, H/b, W/b)
        cells = cells + _laplace(cells.shape, self.scale((c, h, w)), generator)
        return cells.repeat_interleave(b, dim=2).repeat_interleave(b, dim=3)  # (N, C, H, W)


@dataclass(frozen=True)
class PaperBrightnessShift(Mechanism):
    """Input perturbation exactly as Singh et al. 2020's code applied it (pneumonia study).

    ONE Laplace draw of scale P/epsilon (255/epsilon) per image, added to every pixel,
    training images only. Every output is the image plus a constant, so any two images that
    differ other than by a uniform brightness change can be told apart with certainty: it is
    NOT image-level privacy. Its `epsilon` is the paper's noise parameter, not a guarantee; it
    is epsilon-DP only between images that differ by a uniform shift of at most P. The
    authors' script (sahibsin/DP_DeepLearning_Pneumonia, Experimental_Setup/noise_script.py)
    draws one Laplace(0, 255/eps) value per training image, adds it to the float image and
    writes an 8-bit JPEG, which saturates to [0, 255]: `apply` clips and rounds the same way
    (without the JPEG re-encoding); `noisy` gives the unclipped sum.
    """

    epsilon: float
    pixel_max: float = PIXEL_MAX
    name: ClassVar[str] = "singh2020_brightness_shift"
    training_images_only: ClassVar[bool] = True

    def scale(self) -> float:
        return self.pixel_max / self.epsilon

    def guarantee(self, image_shape: Sequence[int]) -> Guarantee:
        return Guarantee(
            kind=KIND_NONE, epsilon=None, delta=None,
            neighbouring="none between distinct images (only images that differ by a uniform"
            f" brightness shift of at most {self.pixel_max:g} are protected)",
            sensitivity=None, sensitivity_norm=None, noise="laplace", noise_scale=self.scale(),
            noise_scale_meaning="Laplace scale b of the one draw added to all pixels of an image",
            image_shape=_shape3(image_shape),
            note=f"a brightness shift; the paper called its parameter epsilon={self.epsilon},"
            " which is not an epsilon of any image-level guarantee",
        )

    def _raw(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        shift = _laplace((images.shape[0], 1, 1, 1), self.scale(), generator)  # (N, 1, 1, 1)
        return images + shift


MECHANISMS: dict[str, type[Mechanism]] = {
    cls.name: cls for cls in (PixelLaplace, PixelGaussian, DpPix, PaperBrightnessShift)
}


def parse_mechanism(spec: str | Mapping[str, Any] | Mechanism) -> Mechanism:
    """A mechanism from `"laplace:eps=1"`, `{"name": "dp_pix", "eps": 1, "b": 4}` or itself."""
    if isinstance(spec, Mechanism):
        return spec
    if isinstance(spec, str):
        name, _, rest = spec.strip().partition(":")
        raw = {}
        for item in filter(None, (part.strip() for part in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq:
                raise ConfigError(f"perturb spec {spec!r}: expected key=value, got {item!r}")
            raw[key.strip()] = _number(value.strip(), key.strip(), spec)
    else:
        raw = dict(spec)
        name = str(raw.pop("name", ""))
    cls = MECHANISMS.get(name.strip())
    if cls is None:
        raise ConfigError(f"unknown perturbation {name!r}; choose one of {sorted(MECHANISMS)}")
    fields = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    params = {}
    for key, value in raw.items():
        field = cls.aliases.get(key, key)
        if field not in fields:
            raise ConfigError(f"{name}: unknown parameter {key!r}; it takes {fields}")
        params[field] = value
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in params  # type: ignore
               and f.default is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{name}: missing parameter(s) {missing}, e.g. {name}:epsilon=1")
    return cls(**params)


def perturb_dataset(
    source: Path, destination: Path, mechanism: str | Mapping[str, Any] | Mechanism, seed: int,
    splits: Sequence[str] = ("train",),
) -> dict[str, Any]:
    """Write a private copy of a MedMNIST-layout npz and a JSON record beside it.

    Perturbs `splits` (training images only by default; the paper's brightness shift refuses
    any other split) and copies the other arrays unchanged. Each split's noise comes from its
    own seed, derived from `seed` and the split name, so the choice of splits never changes a
    split's noise. Writes `destination` and `destination.with_suffix(".json")` atomically and
    returns the record: mechanism, parameters, guarantee, seed and which images were perturbed.
    """
    mech = parse_mechanism(mechanism)
    splits = _check_splits(mech, splits)
    arrays = _read_npz(Path(source))
    present = [s for s in SPLITS if f"{s}_images" in arrays]
    missing = [s for s in splits if s not in present]
    if missing:
        raise DataError(f"{source}: no {missing[0]}_images array; present splits: {present}")
    shape = None
    for split in splits:
        images = _to_nchw(arrays[f"{split}_images"], source, split)
        shape = images.shape[1:]
        arrays[f"{split}_images"] = _from_nchw(
            _apply_in_chunks(mech, images, _split_seed(seed, split)),
            arrays[f"{split}_images"].ndim,
        )
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    record = _record(mech, seed, splits, present, shape) | {
        "source": str(source), "source_sha256": _sha256(Path(source).read_bytes()),
        "destination_sha256": _sha256(buffer.getvalue()),
    }
    write_bytes_atomic(Path(destination), buffer.getvalue())
    write_json_atomic(Path(destination).with_suffix(".json"), record)
    return record


def perturb_training_images(
    dataset: Any, mechanism: str | Mapping[str, Any] | Mechanism, seed: int
) -> tuple[Any, dict[str, Any]]:
    """A loaded `dpscope.data.Dataset` with private training images, and the record.

    The mechanism's pixel_max is set to the dataset's (a record shows the one used). The
    normalisation statistics are recomputed from the private training images (post-
    processing, so free); validation and test images stay as they are. Same seed, same
    images as `perturb_dataset` gives for the training split.
    """
    from dpscope.data.dataset import ImageSplit, channel_mean_std

    mech = dataclasses.replace(parse_mechanism(mechanism),  # type: ignore[type-var]
                               pixel_max=float(dataset.pixel_max))
    train = dataset.train
    images = _apply_in_chunks(mech, train.images, _split_seed(seed, "train"))
    mean, std = channel_mean_std(images, dataset.pixel_max)
    private = dataclasses.replace(
        dataset, train=ImageSplit(images, train.labels, train.groups), mean=mean, std=std
    )
    record = _record(mech, seed, ("train",), list(SPLITS), images.shape[1:])
    return private, record | {"source": dataset.source, "dataset": dataset.name}


def _check_splits(mech: Mechanism, splits: Sequence[str]) -> tuple[str, ...]:
    splits = tuple(splits)
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise ConfigError(f"unknown split(s) {bad}; choose from {list(SPLITS)}")
    if mech.training_images_only and splits != ("train",):
        raise ConfigError(f"{mech.name} is applied to training images only; use splits=('train',)")
    return splits


def _record(mech: Mechanism, seed: int, splits: tuple[str, ...], present: list[str],
            shape: Sequence[int] | None) -> dict[str, Any]:
    return {
        "mechanism": mech.name, "spec": mech.spec(), "parameters": mech.params(), "seed": seed,
        "split_seeds": {s: _split_seed(seed, s) for s in splits},
        "guarantee": None if shape is None else mech.guarantee(shape).to_dict(),
        "perturbed_splits": list(splits),
        "unchanged_splits": [s for s in present if s not in splits],
        "applied_to": _applied_to(splits),
        "post_processing": f"raw output clipped to [0, {mech.pixel_max:g}] and rounded to uint8",
    }


def _applied_to(splits: tuple[str, ...]) -> str:
    if splits == ("train",):
        return "training images only; validation and test images are unchanged"
    return "images of the splits " + ", ".join(splits)


def _apply_in_chunks(mech: Mechanism, images: torch.Tensor, seed: int) -> torch.Tensor:
    generator = _generator(seed)
    chunks = [mech.apply(images[i : i + _CHUNK_IMAGES], generator)
              for i in range(0, len(images), _CHUNK_IMAGES)]
    return torch.cat(chunks) if chunks else images.clone()


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: no such npz file; give the path of a MedMNIST-layout .npz")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable npz file ({exc})") from exc


def _to_nchw(array: np.ndarray, source: Path, split: str) -> torch.Tensor:
    """MedMNIST stores (N, H, W) grey or (N, H, W, C) colour images; the mechanisms take NCHW."""
    if array.dtype != np.uint8 or array.ndim not in (3, 4):
        raise DataError(
            f"{source}: {split}_images must be uint8 (N, H, W) or (N, H, W, C), "
            f"got {array.dtype} {array.shape}"
        )
    x = torch.from_numpy(np.ascontiguousarray(array))
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


def _from_nchw(images: torch.Tensor, ndim: int) -> np.ndarray:
    out = images[:, 0] if ndim == 3 else images.permute(0, 2, 3, 1)
    return np.ascontiguousarray(out.numpy())


def _as_float_images(images: Any, pixel_max: float) -> tuple[torch.Tensor, bool]:
    to_numpy = isinstance(images, np.ndarray)
    x = torch.from_numpy(images) if to_numpy else images
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = getattr(images, "shape", None)
        raise DataError(f"images must be an (N, C, H, W) array or tensor, got shape {shape}")
    if x.dtype == torch.bool or x.is_complex():
        raise DataError(f"images must hold pixel values in [0, 255], got dtype {x.dtype}")
    x = x.to(torch.float64)
    if x.numel() and (x.min() < 0 or x.max() > pixel_max or x.isnan().any()):
        raise DataError(
            f"pixel values must lie in [0, {pixel_max:g}] for the stated sensitivity; got "
            f"[{float(x.min())}, {float(x.max())}]; set the mechanism's pixel_max to the data's"
        )
    return x, to_numpy


def _generator(seed: int | torch.Generator) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an integer or torch.Generator, got {seed!r}")
    return torch.Generator().manual_seed(int(seed))


def _laplace(shape: Sequence[int], scale: float, generator: torch.Generator) -> torch.Tensor:
    """Laplace(0, scale) as the difference of two independent Exp(1) draws, times scale."""
    first = torch.empty(tuple(shape), dtype=torch.float64).exponential_(generator=generator)
    second = torch.empty(tuple(shape), dtype=torch.float64).exponential_(generator=generator)
    return (first - second) * scale


def _shape3(image_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(d) for d in image_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise DataError(f"image shape must be (C, H, W) with positive sizes, got {shape}")
    return shape  # type: ignore[return-value]


def _n_values(image_shape: Sequence[int]) -> int:
    return math.prod(_shape3(image_shape))


def _check_positive(field: str, value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name}: {field} must be a positive number, got {value!r}")
    if math.isinf(value):
        raise ConfigError(f"{name}: {field} must be finite, got {value!r}")
    return float(value)


def _number(text: str, key: str, spec: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"perturb spec {spec!r}: {key} must be a number, got {text!r}") from None


def _split_seed(seed: int, split: str) -> int:
    digest = hashlib.sha256(f"dpscope.perturb:{int(seed)}:{split}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
