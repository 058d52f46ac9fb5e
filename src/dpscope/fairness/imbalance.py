"""Imbalance controls: draw example indices so that one group (or class) has a given share.

Pure functions of label/group arrays and a seed; they return sorted int64 indices into the
arrays. The "rest" is every example whose key is not the chosen group, drawn uniformly, so
several minority values keep their relative frequencies in expectation.

Rounding (exact, on the decimal value of `share`): for a result of `total` examples the rest
gets round-half-up((1 - share) * total) examples and the group the remainder, so the realised
share is within 0.5 / total of `share` and equals it when share * total is an integer
(0.999 of 30,000 = 29,970 + 30). Without a total, the largest subset whose share is exact is
taken (a multiple of the share's denominator: 1,000 for 0.999), or, where the data has no
such subset, the largest rounded one. With `balance_by` (e.g. the target), each part is split as
evenly as possible across all label values of the data; a remainder of r goes to the r
smallest values.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Literal

import numpy as np

from dpscope.errors import ConfigError, DataError
from dpscope.fairness._arrays import as_1d

TestComposition = Literal["balanced", "same_imbalance"]
_TEST_SHARE = {"balanced": lambda share: 0.5, "same_imbalance": lambda share: share}


def share_counts(share: float, total: int) -> tuple[int, int]:
    """(group, rest) example counts for `total` examples with the group at `share`."""
    exact = _check_share(share)
    if isinstance(total, bool) or not isinstance(total, (int, np.integer)) or total < 1:
        raise ConfigError(f"total must be a positive integer, got {total!r}")
    rest = _rest_count(exact, int(total))
    group = int(total) - rest
    if rest < 1 or group < 1:
        side = "minority" if rest < 1 else "chosen group"
        raise DataError(
            f"a share of {share} of {total} examples leaves {min(rest, group)} {side} examples "
            f"(fewer than 1); use more examples (total >= {_min_total(exact)}) or a share "
            "further from 0 and 1"
        )
    return group, rest


def subsample_to_share(
    keys: Any, group: Any, share: float, *, seed: int, total: int | None = None,
    balance_by: Any = None,
) -> np.ndarray:
    """Indices of a subset in which examples with key `group` make up `share`, exactly.

    `total=None` takes the largest subset the data allows. `balance_by` (labels, same length
    as `keys`) additionally splits each part evenly across all label values of the data, as
    Farrand et al. 2020 balanced the target within their imbalanced CelebA subsets.
    """
    keys = as_1d(keys, "keys")
    labels = None if balance_by is None else as_1d(balance_by, "balance_by")
    if labels is not None and len(labels) != len(keys):
        raise DataError(f"balance_by has {len(labels)} entries for {len(keys)} keys")
    in_group = keys == group
    if not in_group.any():
        raise DataError(f"no example has the key {group!r}; keys present: "
                        f"{np.unique(keys).tolist()[:10]}")
    parts = [_cells(np.flatnonzero(mask), labels) for mask in (in_group, ~in_group)]
    capacity = [_capacity(cells) for cells in parts]
    if total is None:
        total = _largest_total(_check_share(share), capacity[0], capacity[1])
    counts = share_counts(share, total)
    for name, part_count, cap in zip(("group", "rest"), counts, capacity):
        if part_count > cap:
            raise DataError(
                f"{total} examples at share {share} need {part_count} {name} examples"
                f"{' balanced by label' if labels is not None else ''} but only {cap} exist; "
                f"ask for fewer (total=None takes the largest possible)"
            )
    rng = np.random.default_rng(seed)
    chosen = [_draw(cells, n, rng) for cells, n in zip(parts, counts)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def test_set_indices(
    keys: Any, group: Any, share: float, composition: TestComposition, *, seed: int,
    total: int | None = None, balance_by: Any = None,
) -> np.ndarray:
    """Test-set indices: `balanced` (group 50 % vs the rest) or `same_imbalance` (at `share`).

    Farrand et al. 2020 drew the test set with the same imbalance as training, which leaves
    few minority test examples; `balanced` measures each group with equal weight instead.
    """
    if composition not in _TEST_SHARE:
        raise ConfigError(f"unknown test composition {composition!r}; choose from "
                          f"{sorted(_TEST_SHARE)}")
    return subsample_to_share(keys, group, _TEST_SHARE[composition](share), seed=seed,
                              total=total, balance_by=balance_by)


test_set_indices.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def _check_share(share: float) -> Fraction:
    if isinstance(share, bool) or not isinstance(share, (int, float, np.floating)):
        raise ConfigError(f"share must be a number in (0, 1), got {share!r}")
    if not 0 < share < 1:
        hint = f" (give a fraction: {share / 100} for {share} %)" if 1 < share < 100 else ""
        raise ConfigError(f"share must lie strictly between 0 and 1, got {share}{hint}")
    return Fraction(repr(float(share)))


def _min_total(exact: Fraction) -> int:
    """Smallest total whose rounded group and rest counts are both at least 1."""
    total = max(1, int(Fraction(1, 2) / min(exact, 1 - exact)) - 1)
    while not _both_present(exact, total):
        total += 1
    return total


def _rest_count(exact: Fraction, total: int) -> int:
    return int((1 - exact) * total + Fraction(1, 2))  # round half up, exactly


def _both_present(exact: Fraction, total: int) -> bool:
    rest = _rest_count(exact, total)
    return rest >= 1 and total - rest >= 1


def _largest_total(exact: Fraction, group_cap: int, rest_cap: int) -> int:
    """The largest total with share exact (a multiple of its denominator), else rounded."""
    p, q = exact.numerator, exact.denominator
    multiples = min(group_cap // p, rest_cap // (q - p))
    if multiples >= 1:
        return multiples * q
    # no total above these bounds can fit; rounding moves a count by at most 1/2
    start = min(group_cap + rest_cap, int((group_cap + 1) / exact),
                int((rest_cap + 1) / (1 - exact)))
    for total in range(start, 0, -1):
        rest = _rest_count(exact, total)
        if rest <= rest_cap and total - rest <= group_cap:
            if _both_present(exact, total):
                return total
            break
    raise DataError(
        f"only {group_cap} group and {rest_cap} other examples: no subset has share "
        f"{float(exact)} with at least one of each; use a share further from 0 and 1"
    )


def _cells(part: np.ndarray, labels: np.ndarray | None) -> list[np.ndarray]:
    """A part's indices by label value (every value in the data, so a missing one is empty)."""
    if labels is None:
        return [part]
    return [part[labels[part] == value] for value in np.unique(labels)]


def _split_counts(n: int, n_cells: int) -> np.ndarray:
    """Counts per cell that sum to n, as even as possible, remainder to the first cells."""
    base, remainder = divmod(n, n_cells)
    return base + (np.arange(n_cells) < remainder)


def _capacity(cells: list[np.ndarray]) -> int:
    """The most examples the cells can give split by `_split_counts`."""
    available = [len(cell) for cell in cells]
    low = min(available)
    leading = 0
    while leading < len(cells) - 1 and available[leading] > low:
        leading += 1
    return low * len(cells) + leading


def _draw(cells: list[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    counts = _split_counts(n, len(cells))
    return np.concatenate([rng.choice(cell, size=int(k), replace=False)
                           for cell, k in zip(cells, counts)])
