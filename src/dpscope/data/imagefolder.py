"""Images in class folders: `root/<class>/*.png|jpg|jpeg`, or `root/{train,val,test}/<class>/...`.

Class names are the sorted folder names (of `train/` when split folders exist). With split
folders, `train/` and `test/` are required and a missing `val/` is carved from `train/`
(stratified 10 %, from `seed`); without them the images are split stratified 70 / 10 / 20 %.
Images are not resized: they must all have one size (a clear error names the first that
differs). Grey files ("L", "1") give 1 channel; any colour file makes all images RGB (alpha is
dropped); 16-bit or float files are refused (no lossless 8-bit form).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from dpscope.data.assemble import SPLITS, images_to_uint8, make_dataset
from dpscope.data.dataset import Dataset
from dpscope.data.splits import stratified_split
from dpscope.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GREY_MODES = ("L", "1")
_COLOUR_MODES = ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr")
FLAT_FRACTIONS = (0.7, 0.1, 0.2)
VAL_FRACTION_OF_TRAIN = 0.1


def _class_folders(root: Path) -> list[Path]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root}: no class subfolders; expected one folder of images per class")
    return folders


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _read_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DataError(f"{path}: not a readable image ({error})") from None


def _read_folder(root: Path, class_names: tuple[str, ...]) -> tuple[list[Image.Image], list[Path], list[int]]:
    images, paths, labels = [], [], []
    for folder in _class_folders(root):
        if folder.name not in class_names:
            raise DataError(
                f"{folder}: class folder not among the training classes ({', '.join(class_names)})"
            )
        for path in _image_files(folder):
            images.append(_read_image(path))
            paths.append(path)
            labels.append(class_names.index(folder.name))
    return images, paths, labels


def _stack(images: list[Image.Image], paths: list[Path], grey: bool, where: Path) -> torch.Tensor:
    """(N, C, H, W) uint8 from PIL images of one size; DataError naming the first misfit."""
    if not images:
        return torch.empty(0, 1 if grey else 3, 0, 0, dtype=torch.uint8)
    size = images[0].size
    arrays = []
    for image, path in zip(images, paths):
        if image.mode not in _GREY_MODES + _COLOUR_MODES:
            raise DataError(
                f"{path}: image mode {image.mode} (16-bit or float) has no 8-bit form; save it as 8-bit"
            )
        if image.size != size:
            raise DataError(
                f"{path}: image is {image.size[0]}x{image.size[1]} but {paths[0].name} is "
                f"{size[0]}x{size[1]}; all images must have one size (resize them first)"
            )
        arrays.append(np.asarray(image.convert("L" if grey else "RGB")))
    return images_to_uint8(np.stack(arrays), str(where))  # (N, H, W) or (N, H, W, 3)


def load_imagefolder(root: str | Path, seed: int = 0) -> Dataset:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    has_splits = (root / "train").is_dir()
    if has_splits and not (root / "test").is_dir():
        raise DataError(f"{root}: has train/ but no test/; give both (val/ is optional) or neither")
    train_root = root / "train" if has_splits else root
    class_names = tuple(folder.name for folder in _class_folders(train_root))
    present = [s for s in SPLITS if (root / s).is_dir()] if has_splits else ["train"]
    folders = {split: train_root if split == "train" else root / split for split in present}
    read = {split: _read_folder(folder, class_names) for split, folder in folders.items()}
    grey = all(image.mode in _GREY_MODES for images, _, _ in read.values() for image in images)
    stacked = {
        split: (_stack(images, paths, grey, folders[split]), torch.tensor(labels, dtype=torch.int64))
        for split, (images, paths, labels) in read.items()
    }
    splits = _fill_missing_splits(stacked, has_splits, seed, root)
    how = "split folders" if has_splits else f"stratified 70/10/20 split, seed {seed}"
    return make_dataset(root.name, f"{root} ({how})", splits, class_names)


def _fill_missing_splits(stacked: dict, has_splits: bool, seed: int, root: Path) -> dict:
    """Carve val (and test, for a flat folder) out of the training images."""
    if has_splits and "val" in stacked:
        return stacked
    images, labels = stacked["train"]
    if len(labels) == 0:
        raise DataError(f"{root}: no training images ({', '.join(IMAGE_SUFFIXES)}) in the class folders")
    if has_splits:
        fractions = (1.0 - VAL_FRACTION_OF_TRAIN, VAL_FRACTION_OF_TRAIN)
        train, val = stratified_split(labels, fractions, seed)
        return {
            "train": (images[train], labels[train]),
            "val": (images[val], labels[val]),
            "test": stacked["test"],
        }
    parts = stratified_split(labels, FLAT_FRACTIONS, seed)
    return {split: (images[index], labels[index]) for split, index in zip(SPLITS, parts)}
