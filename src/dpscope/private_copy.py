"""`dpscope perturb`: a private copy of any dataset as a MedMNIST-layout `.npz` and its record.

Datasets stored as `.npz` are perturbed from their file (`data.perturb.perturb_dataset`); the
others (digits, image folders, torchvision sets) are first exported in that layout with the
split their `seed` draws, so the copy trains exactly like the original: `dpscope train
--dataset COPY.npz`. The record beside the copy (`COPY.json`) states the mechanism, its
parameters and the guarantee it gives, and which splits were perturbed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dpscope.data import Dataset, load_dataset
from dpscope.errors import ConfigError
from dpscope.io import write_json_atomic

__all__ = ["export_npz", "write_private_copy"]


def write_private_copy(dataset: str, mechanism: str, out: Path, *, seed: int = 0,
                       data_dir: Path | None = None,
                       splits: Sequence[str] = ("train",)) -> dict[str, Any]:
    """Perturb `splits` of `dataset` into `out` (.npz) and `out.with_suffix(".json")`."""
    from dpscope.data.perturb import parse_mechanism, perturb_dataset

    out = Path(out)
    if out.suffix != ".npz":
        raise ConfigError(f"--out {out}: the private copy is an .npz file; name it e.g. "
                          f"{out.with_suffix('.npz').name}")
    mech = parse_mechanism(mechanism)  # a bad spec fails before any data is read
    loaded = load_dataset(dataset, data_dir=data_dir, seed=seed)
    source = Path(loaded.source)
    if source.suffix == ".npz" and source.is_file():
        return perturb_dataset(source, out, mech, seed, splits)
    with tempfile.TemporaryDirectory(prefix="dpscope-export-") as folder:
        exported = export_npz(loaded, Path(folder) / f"{loaded.name}.npz")
        record = perturb_dataset(exported, out, mech, seed, splits)
    record |= {"source": loaded.source, "source_note": "exported in MedMNIST layout (images "
               "(N, H, W) or (N, H, W, C), labels (N, 1)) before perturbation; source_sha256 "
               "is that export's"}
    write_json_atomic(out.with_suffix(".json"), record)
    return record


def export_npz(dataset: Dataset, path: Path) -> Path:
    """Write the dataset's three splits as a MedMNIST-layout `.npz` (uint8 images)."""
    arrays = {}
    for split in ("train", "val", "test"):
        part = getattr(dataset, split)
        images = part.images.cpu().numpy()  # (N, C, H, W)
        images = images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1)
        arrays[f"{split}_images"] = np.ascontiguousarray(images)
        arrays[f"{split}_labels"] = part.labels.cpu().numpy().reshape(-1, 1)
    np.savez_compressed(path, **arrays)
    return path
