"""`load_dataset`: one entry point from a name or a path to a checked `Dataset`."""

from __future__ import annotations

from pathlib import Path

from dpscope.data.dataset import Dataset
from dpscope.data.digits import load_digits_dataset
from dpscope.data.imagefolder import load_imagefolder
from dpscope.data.locate import find_file
from dpscope.data.medmnist import MEDMNIST_2D, load_medmnist, load_npz
from dpscope.data.torchvision_sets import TORCHVISION_SETS, load_torchvision
from dpscope.errors import DataError

DATASETS: tuple[str, ...] = ("digits", *MEDMNIST_2D, "imagefolder", *TORCHVISION_SETS)


def load_dataset(name: str, *, data_dir: str | Path | None = None, seed: int = 0) -> Dataset:
    """The dataset `name` (one of DATASETS), or the `.npz` file or image folder at path `name`.

    `data_dir` is searched first for files and is the folder for `imagefolder`. `seed` fixes
    the split of datasets without an official one (digits, image folders, torchvision sets);
    the same arguments always give the same Dataset. Names are case-insensitive.
    """
    if name.lower() in DATASETS:
        name = name.lower()
    if name == "digits":
        return load_digits_dataset(seed)
    if name == "imagefolder":
        if data_dir is None:
            raise DataError("dataset 'imagefolder' needs data_dir (--data-dir): the folder of class folders")
        return load_imagefolder(data_dir, seed)
    if name in TORCHVISION_SETS:
        return load_torchvision(name, data_dir, seed)
    if name in MEDMNIST_2D:
        return load_medmnist(name, data_dir)
    path = Path(name).expanduser()
    if name.endswith(".npz"):
        return load_npz(path)
    if path.is_dir():
        return load_imagefolder(path, seed)
    found, searched = find_file(f"{name}.npz", data_dir)
    if found is not None:
        return load_npz(found)
    raise DataError(
        f"unknown dataset {name!r}: not one of {', '.join(DATASETS)}, not a .npz file or image folder, "
        f"and no {name}.npz in {', '.join(map(str, searched))}"
    )
