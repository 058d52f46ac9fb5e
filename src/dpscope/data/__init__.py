"""Datasets by name (digits, MedMNIST `.npz`, image folders, optional torchvision sets).

Every loader returns a `Dataset` of uint8 images with train-only normalisation statistics;
`Dataset.batch` turns indices into a normalised batch in one vectorised step.
"""

from __future__ import annotations

from dpscope.data.dataset import Dataset, ImageSplit, channel_mean_std
from dpscope.data.imagefolder import load_imagefolder
from dpscope.data.medmnist import MEDMNIST_2D, load_npz
from dpscope.data.registry import DATASETS, load_dataset
from dpscope.data.splits import stratified_split

__all__ = [
    "DATASETS",
    "MEDMNIST_2D",
    "Dataset",
    "ImageSplit",
    "channel_mean_std",
    "load_dataset",
    "load_imagefolder",
    "load_npz",
    "stratified_split",
]
