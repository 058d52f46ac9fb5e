"""MedMNIST 2D `.npz` files (Yang et al. 2023), found locally or downloaded and checksummed.

A file holds train_images / train_labels / val_* / test_*; images (N, H, W) grey or
(N, H, W, 3) RGB uint8, labels (N, 1). Any file with that layout loads, by MedMNIST name
(`pneumoniamnist` -> `pneumoniamnist.npz` in the searched folders) or by path. For the official
names the class names and MD5 checksums are those of the `medmnist` package (v3.0, Zenodo
record 10519652, 28 px files); other files get classes "0".."K-1" from their labels.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from dpscope.data.assemble import SPLITS, images_to_uint8, labels_to_int64, make_dataset
from dpscope.data.dataset import Dataset
from dpscope.data.locate import download_dir, download_verified, find_file
from dpscope.errors import DataError

RECORD_URL = "https://zenodo.org/records/10519652/files"

_ORGANS = ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver",
           "lung-left", "lung-right", "pancreas", "spleen")

# name -> (MD5 of the 28 px file, class names by label)
MEDMNIST_2D: dict[str, tuple[str, tuple[str, ...]]] = {
    "pathmnist": ("a8b06965200029087d5bd730944a56c1", (
        "adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
        "normal colon mucosa", "cancer-associated stroma", "colorectal adenocarcinoma epithelium")),
    "dermamnist": ("0744692d530f8e62ec473284d019b0c7", (
        "actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
        "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
        "vascular lesions")),
    "octmnist": ("c68d92d5b585d8d81f7112f81e2d0842", (
        "choroidal neovascularization", "diabetic macular edema", "drusen", "normal")),
    "pneumoniamnist": ("28209eda62fecd6e6a2d98b1501bb15f", ("normal", "pneumonia")),
    "retinamnist": ("bd4c0672f1bba3e3a89f0e4e876791e4", ("0", "1", "2", "3", "4")),
    "breastmnist": ("750601b1f35ba3300ea97c75c52ff8f6", ("malignant", "normal, benign")),
    "bloodmnist": ("7053d0359d879ad8a5505303e11de1dc", (
        "basophil", "eosinophil", "erythroblast", "immature granulocytes", "lymphocyte", "monocyte",
        "neutrophil", "platelet")),
    "tissuemnist": ("ebe78ee8b05294063de985d821c1c34b", (
        "collecting duct, connecting tubule", "distal convoluted tubule", "glomerular endothelial cells",
        "interstitial endothelial cells", "leukocytes", "podocytes", "proximal tubule segments",
        "thick ascending limb")),
    "organamnist": ("68e3f8846a6bd62f0c9bf841c0d9eacc", _ORGANS),
    "organcmnist": ("b9ceb9546e10131b32923c5bbeaea2b1", _ORGANS),
    "organsmnist": ("9ab87b696fb54e2a387ebe992d6ed5f1", _ORGANS),
}
_MULTI_LABEL = ("chestmnist",)
REQUIRED_KEYS = tuple(f"{split}_{part}" for split in SPLITS for part in ("images", "labels"))


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """All six arrays of a MedMNIST-layout file, read eagerly; DataError for any damage."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if not zipfile.is_zipfile(path):
        raise DataError(
            f"{path}: not a .npz (zip) archive, or one cut short; the file is corrupt or truncated, "
            "download or export it again"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in REQUIRED_KEYS if key not in archive.files]
            if missing:
                raise DataError(
                    f"{path}: missing keys {', '.join(missing)} (found: {', '.join(archive.files) or 'none'}); "
                    "a MedMNIST-layout file needs train/val/test _images and _labels"
                )
            return {key: archive[key] for key in REQUIRED_KEYS}
    except DataError:
        raise
    except ValueError as error:
        if "pickle" not in str(error):
            raise _corrupt(path, error) from None
        raise DataError(
            f"{path}: holds pickled Python objects, not numeric arrays; save the images and labels "
            "as plain numeric arrays"
        ) from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
        raise _corrupt(path, error) from None


def _corrupt(path: Path, error: Exception) -> DataError:
    return DataError(
        f"{path}: not a readable .npz archive ({type(error).__name__}: {error}); the file is corrupt "
        "or truncated, download or export it again"
    )


def load_npz(path: str | Path, name: str | None = None) -> Dataset:
    """A Dataset from a MedMNIST-layout `.npz`; `name` defaults to the file's stem."""
    path = Path(path).expanduser()
    name = name or path.stem
    if name in _MULTI_LABEL:
        raise DataError(f"{path}: {name} is multi-label; dpscope trains single-label classifiers")
    arrays = read_npz(path)
    splits = {
        split: (
            images_to_uint8(arrays[f"{split}_images"], f"{path} [{split}_images]"),
            labels_to_int64(arrays[f"{split}_labels"], f"{path} [{split}_labels]"),
        )
        for split in SPLITS
    }
    if name in MEDMNIST_2D:
        class_names = MEDMNIST_2D[name][1]
    else:
        top = max((int(labels.max()) for _, labels in splits.values() if len(labels)), default=0)
        class_names = tuple(str(k) for k in range(max(top, 0) + 1))
    return make_dataset(name, str(path), splits, class_names)


def load_medmnist(name: str, data_dir: str | Path | None = None) -> Dataset:
    """MedMNIST dataset `name`: the first `<name>.npz` in the searched folders, else downloaded.

    A download goes to `locate.download_dir(data_dir)` and is kept only when its MD5 matches
    the official one.
    """
    filename = f"{name}.npz"
    path, searched = find_file(filename, data_dir)
    if path is None:
        if name not in MEDMNIST_2D:
            raise DataError(f"{filename} not found; searched: {', '.join(map(str, searched))}")
        md5 = MEDMNIST_2D[name][0]
        url = f"{RECORD_URL}/{filename}?download=1"
        target = download_dir(data_dir) / filename
        try:
            path = download_verified(url, md5, target)
        except OSError as error:
            raise DataError(
                f"{filename} not found (searched: {', '.join(map(str, searched))}) and the download from "
                f"{url} failed ({error}); put the file in one of those folders or set DPSCOPE_DATA"
            ) from None
    return load_npz(path, name)

