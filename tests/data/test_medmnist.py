"""MedMNIST files: the shared PneumoniaMNIST against its README, search order, checked download."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from dpscope.data import load_dataset, load_npz
from dpscope.data import medmnist
from dpscope.data.locate import download_verified, search_dirs
from dpscope.errors import DataError

from data_test_helpers import SHARED_NPZ, needs_shared_npz, small_medmnist_arrays

# the table of ../shared/data/README.md: split -> (N, count of class 0, count of class 1)
README_TABLE = {"train": (4708, 1214, 3494), "val": (524, 135, 389), "test": (624, 234, 390)}
README_SHA256 = "d0bfa3330f26554c4117328b1117f52bfb3746404b0594c58f37a09b4314d396"


@pytest.fixture
def isolated_search(tmp_path, monkeypatch):
    """DPSCOPE_DATA and the cache in tmp_path, so only files placed there can be found."""
    monkeypatch.setenv("DPSCOPE_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "env").mkdir()
    return tmp_path



@needs_shared_npz
def test_shared_pneumoniamnist_matches_its_readme():
    assert hashlib.sha256(SHARED_NPZ.read_bytes()).hexdigest() == README_SHA256
    dataset = load_dataset("pneumoniamnist")
    assert Path(dataset.source).resolve() == SHARED_NPZ.resolve()
    assert dataset.class_names == ("normal", "pneumonia")
    assert (dataset.in_channels, dataset.image_size, dataset.pixel_max) == (1, 28, 255.0)
    for split, (n, normal, pneumonia) in README_TABLE.items():
        labels = getattr(dataset, split).labels
        assert getattr(dataset, split).images.shape == (n, 1, 28, 28)
        assert torch.bincount(labels, minlength=2).tolist() == [normal, pneumonia]


@needs_shared_npz
def test_shared_file_loads_by_path_with_the_same_content():
    by_name = load_dataset("pneumoniamnist")
    by_path = load_dataset(str(SHARED_NPZ))
    assert by_path.class_names == ("normal", "pneumonia")
    assert torch.equal(by_name.test.images, by_path.test.images) and by_name.mean == by_path.mean


def test_data_dir_is_searched_before_dpscope_data(isolated_search, write_npz):
    first = isolated_search / "mine"
    first.mkdir()
    np.savez(first / "bloodmnist.npz", **small_medmnist_arrays(rgb=True, num_classes=8, sizes=(16, 8, 8)))
    np.savez(isolated_search / "env" / "bloodmnist.npz", **small_medmnist_arrays(rgb=True, num_classes=8, seed=1))
    dataset = load_dataset("bloodmnist", data_dir=first)
    assert dataset.source == str(first / "bloodmnist.npz")
    assert dataset.num_classes == 8 and dataset.class_names[0] == "basophil" and dataset.in_channels == 3
    assert load_dataset("bloodmnist").source == str(isolated_search / "env" / "bloodmnist.npz")


def test_any_npz_name_in_the_searched_folders_loads(isolated_search):
    np.savez(isolated_search / "env" / "mytask.npz", **small_medmnist_arrays(num_classes=3))
    dataset = load_dataset("mytask")
    assert dataset.name == "mytask" and dataset.class_names == ("0", "1", "2")


def test_offline_failure_is_one_line_naming_every_folder_searched(isolated_search, monkeypatch):
    monkeypatch.setattr(medmnist, "RECORD_URL", "http://127.0.0.1:9/files")  # nothing listens there
    with pytest.raises(DataError) as info:
        load_dataset("dermamnist")
    message = str(info.value)
    assert "\n" not in message and "download" in message
    for folder in search_dirs(None):
        assert str(folder) in message
    assert not any((isolated_search / "env").iterdir())  # no partial file left behind


def _file_url(path: Path) -> str:
    return path.resolve().as_uri()


def test_download_keeps_a_file_whose_md5_matches(tmp_path, write_npz):
    source = write_npz("src.npz", base=small_medmnist_arrays(num_classes=2))
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    target = download_verified(_file_url(source), md5, tmp_path / "out" / "pneumoniamnist.npz")
    assert target.read_bytes() == source.read_bytes()
    assert load_npz(target).class_names == ("normal", "pneumonia")


def test_download_with_wrong_md5_is_discarded(tmp_path, write_npz):
    source = write_npz("src.npz")
    with pytest.raises(DataError, match="MD5"):
        download_verified(_file_url(source), "0" * 32, tmp_path / "out" / "x.npz")
    assert list((tmp_path / "out").iterdir()) == []


def test_official_checksums_are_well_formed_md5s():
    assert all(len(md5) == 32 and int(md5, 16) >= 0 for md5, _ in medmnist.MEDMNIST_2D.values())
    assert medmnist.MEDMNIST_2D["pneumoniamnist"] == ("28209eda62fecd6e6a2d98b1501bb15f", ("normal", "pneumonia"))


def test_multi_label_chestmnist_is_refused(write_npz):
    with pytest.raises(DataError, match="multi-label"):
        load_npz(write_npz("chestmnist.npz"))


def test_search_order_is_data_dir_env_shared_then_cache(tmp_path, monkeypatch):
    project = tmp_path / "elsewhere" / "proj"
    (project / "sub").mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    monkeypatch.chdir(project / "sub")
    monkeypatch.setenv("DPSCOPE_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folders = search_dirs(tmp_path / "given")
    assert folders[:2] == [tmp_path / "given", tmp_path / "env"]
    assert tmp_path / "elsewhere" / "shared" / "data" in folders[2:-1]  # beside the CWD's project
    assert folders[-1] == tmp_path / "cache" / "dpscope"
