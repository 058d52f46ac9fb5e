"""Per-example group attributes: from a CSV table, CelebA's attribute file, or the class.

Every reader returns a 1-D array aligned with the dataset's examples (position i is the
group of example i), so metrics and imbalance controls never need to know where it came from.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dpscope.errors import DataError
from dpscope.fairness._arrays import as_1d


def groups_from_labels(labels: Any) -> np.ndarray:
    """The class as the group (per-class fairness); accepts (N,) or MedMNIST's (N, 1) labels."""
    return as_1d(labels, "labels")


def read_group_csv(
    path: Path, ids: int | Sequence[str], *, id_column: str | None = None,
    group_column: str | None = None,
) -> np.ndarray:
    """Group value of each example from a CSV table with a header row.

    `ids` is either the number of examples N (then the id column holds indices 0..N-1) or the
    dataset's image ids in order (then rows whose id the dataset lacks are ignored). Without
    column names the table must have exactly two columns: id, group. Every example needs
    exactly one row with a non-empty group. Returns an (N,) array of strings.
    """
    header, rows = _read_csv(Path(path))
    id_at = _column(path, header, id_column, 0)
    group_at = _column(path, header, group_column, 1)
    if id_column is None and group_column is None and len(header) != 2:
        raise DataError(
            f"{path}: {len(header)} columns {header}; name the id and group columns "
            "(id_column=..., group_column=...) or give a two-column table"
        )
    by_index = isinstance(ids, (int, np.integer))
    n = int(ids) if by_index else len(ids)  # type: ignore[arg-type]
    position = None if by_index else {str(image_id): i for i, image_id in enumerate(ids)}
    groups: list[str | None] = [None] * n
    for line, row in rows:
        key, value = row[id_at].strip(), row[group_at].strip()
        i = _row_position(path, line, key, n, position)
        if i is None:
            continue
        if groups[i] is not None:
            raise DataError(f"{path}:{line}: example {key!r} appears twice; keep one row per id")
        if not value:
            raise DataError(f"{path}:{line}: empty group value for {key!r}")
        groups[i] = value
    missing = [i for i, g in enumerate(groups) if g is None]
    if missing:
        names = [str(i) if by_index else str(ids[i]) for i in missing[:5]]  # type: ignore[index]
        raise DataError(
            f"{path}: {len(missing)} of {n} examples have no group row (first: {names}); "
            "the table must cover every example"
        )
    return np.array(groups, dtype=str)


@dataclass(frozen=True)
class CelebaAttributes:
    """CelebA's list_attr_celeba.txt: 40 binary attributes (+1 / -1) per image file name."""

    image_ids: tuple[str, ...]
    names: tuple[str, ...]
    values: np.ndarray  # (N, A) int8 of +1 / -1

    def groups(self, attribute: str = "Male", ids: Sequence[str] | None = None) -> np.ndarray:
        """(N,) int8 array: 1 where the attribute is present, 0 where absent, in `ids` order."""
        if attribute not in self.names:
            raise DataError(
                f"CelebA has no attribute {attribute!r}; choose from {list(self.names)}"
            )
        column = (self.values[:, self.names.index(attribute)] > 0).astype(np.int8)
        if ids is None:
            return column
        position = {image_id: i for i, image_id in enumerate(self.image_ids)}
        absent = [image_id for image_id in ids if image_id not in position]
        if absent:
            raise DataError(f"{len(absent)} image ids are not in the CelebA table (first: "
                            f"{absent[:3]})")
        return column[[position[image_id] for image_id in ids]]


def read_celeba_attributes(path: Path) -> CelebaAttributes:
    """Parse list_attr_celeba.txt: a count line, a names line, then `file v1 v2 ...` rows."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; give the path of CelebA's list_attr_celeba.txt")
    lines = [line.split() for line in path.read_text().splitlines()]
    if len(lines) < 2 or len(lines[0]) != 1 or not lines[0][0].isdigit():
        raise DataError(f"{path}: not a CelebA attribute file (line 1 must be the image count)")
    count, names = int(lines[0][0]), tuple(lines[1])
    rows = [row for row in lines[2:] if row]
    if len(rows) != count:
        raise DataError(f"{path}: line 1 says {count} images but {len(rows)} rows follow")
    ids, values = [], []
    for line, row in enumerate(rows, start=3):
        if len(row) != len(names) + 1:
            raise DataError(f"{path}:{line}: {len(row) - 1} values for {len(names)} attributes")
        if any(v not in ("1", "-1") for v in row[1:]):
            raise DataError(f"{path}:{line}: attribute values must be 1 or -1")
        ids.append(row[0])
        values.append([int(v) for v in row[1:]])
    matrix = np.array(values, dtype=np.int8).reshape(len(rows), len(names))
    return CelebaAttributes(tuple(ids), names, matrix)


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    if not path.is_file():
        raise DataError(f"{path}: no such group table; give a CSV with an id and a group column")
    with path.open(newline="", encoding="utf-8-sig") as handle:  # tolerate a BOM
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        if not header:
            raise DataError(f"{path}: empty file; the first row must name the columns")
        rows = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{reader.line_num}: {len(row)} cells for "
                                f"{len(header)} columns")
            rows.append((reader.line_num, row))
    return header, rows


def _column(path: Path, header: list[str], name: str | None, default: int) -> int:
    if name is None:
        if default >= len(header):
            raise DataError(f"{path}: needs an id and a group column, found {header}")
        return default
    if name not in header:
        raise DataError(f"{path}: no column {name!r}; columns are {header}")
    return header.index(name)


def _row_position(
    path: Path, line: int, key: str, n: int, position: dict[str, int] | None
) -> int | None:
    if position is not None:
        return position.get(key)
    try:
        index = int(key)
    except ValueError:
        raise DataError(
            f"{path}:{line}: id {key!r} is not an example index; pass the image ids to match "
            "ids by name"
        ) from None
    if not 0 <= index < n:
        raise DataError(f"{path}:{line}: index {index} outside 0..{n - 1}")
    return index
