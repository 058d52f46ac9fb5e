"""Group attributes from CSV tables, CelebA's attribute file and the class itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpscope.errors import DataError
from dpscope.fairness import groups_from_labels, read_celeba_attributes, read_group_csv


def _write(path, text: str):
    path.write_text(text)
    return path


def test_csv_by_index_in_any_row_order(tmp_path):
    table = _write(tmp_path / "g.csv", "\ufeffindex,sex\n2,M\n0,F\n\n1,F\n")
    assert read_group_csv(table, 3).tolist() == ["F", "F", "M"]
    assert read_group_csv(table, 3, id_column="index", group_column="sex").tolist() == [
        "F", "F", "M"]


def test_csv_by_image_id_with_named_columns_ignores_other_images(tmp_path):
    table = _write(tmp_path / "g.csv", "file,age,sex\nb.jpg,30,M\na.jpg,41,F\nz.jpg,9,F\n")
    groups = read_group_csv(table, ["a.jpg", "b.jpg"], id_column="file", group_column="sex")
    assert groups.tolist() == ["F", "M"]


@pytest.mark.parametrize("text,ids,kwargs,message", [
    ("index,sex\n0,F\n0,M\n", 1, {}, r"g.csv:3: example '0' appears twice"),
    ("index,sex\n0,F\n", 3, {}, r"2 of 3 examples have no group row \(first: \['1', '2'\]\)"),
    ("index,sex\nx,F\n", 1, {}, r"id 'x' is not an example index"),
    ("index,sex\n5,F\n", 2, {}, r"index 5 outside 0..1"),
    ("index,sex\n0,\n", 1, {}, "empty group value"),
    ("index,sex\n0,F,extra\n", 1, {}, "3 cells for 2 columns"),
    ("a,b,c\n0,F,1\n", 1, {}, r"3 columns \['a', 'b', 'c'\]; name the id and group columns"),
    ("index,sex\n0,F\n", 1, {"group_column": "gender"}, r"no column 'gender'; columns are"),
    ("", 1, {}, "empty file"),
])
def test_csv_errors_say_what_is_wrong(tmp_path, text, ids, kwargs, message):
    table = _write(tmp_path / "g.csv", text)
    with pytest.raises(DataError, match=message):
        read_group_csv(table, ids, **kwargs)


def test_csv_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such group table"):
        read_group_csv(tmp_path / "none.csv", 1)


CELEBA = """3
5_o_Clock_Shadow Male Smiling
000001.jpg -1 -1  1
000002.jpg -1  1 -1
000003.jpg  1  1  1
"""


def test_celeba_attribute_file_parses_and_gives_groups(tmp_path):
    attributes = read_celeba_attributes(_write(tmp_path / "list_attr_celeba.txt", CELEBA))
    assert attributes.names == ("5_o_Clock_Shadow", "Male", "Smiling")
    assert attributes.image_ids == ("000001.jpg", "000002.jpg", "000003.jpg")
    assert attributes.groups("Male").tolist() == [0, 1, 1]
    assert attributes.groups("Smiling", ids=["000003.jpg", "000002.jpg"]).tolist() == [1, 0]


@pytest.mark.parametrize("text,message", [
    ("three\nMale\n", "line 1 must be the image count"),
    ("2\nMale Smiling\n000001.jpg 1 1\n", "line 1 says 2 images but 1 rows follow"),
    ("1\nMale Smiling\n000001.jpg 1\n", r":3: 1 values for 2 attributes"),
    ("1\nMale Smiling\n000001.jpg 1 0\n", "values must be 1 or -1"),
])
def test_celeba_errors_say_what_is_wrong(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        read_celeba_attributes(_write(tmp_path / "attr.txt", text))


def test_celeba_unknown_attribute_or_image(tmp_path):
    attributes = read_celeba_attributes(_write(tmp_path / "attr.txt", CELEBA))
    with pytest.raises(DataError, match=r"no attribute 'Female'; choose from \["):
        attributes.groups("Female")
    with pytest.raises(DataError, match=r"1 image ids are not in the CelebA table"):
        attributes.groups("Male", ids=["000009.jpg"])


def test_groups_from_labels_accepts_medmnist_and_torch_labels():
    assert groups_from_labels(np.array([[1], [0], [1]])).tolist() == [1, 0, 1]
    assert groups_from_labels(torch.tensor([2, 0])).tolist() == [2, 0]
    with pytest.raises(DataError, match="1-D"):
        groups_from_labels(np.zeros((2, 3)))
