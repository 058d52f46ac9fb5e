"""Relative weight change (RWC) of one layer between two snapshots, in both published forms.

Agrawal et al. 2020 define RWC by the equation ||w_t - w_prev||_1 / ||w_prev||_1 (`rwc_l1`);
their code computes the mean over elements of |w_t - w_prev| / |w_prev| (`rwc_mean_ratio`).
The two differ: the mean ratio weighs every element equally, so small weights that move a lot
dominate it; the L1 ratio weighs elements by their size. dpscope records both.

Zero denominators (both are dimensionless ratios, never inf or NaN for finite inputs):

| case                                      | rwc_mean_ratio                      | rwc_l1 |
| ----------------------------------------- | ----------------------------------- | ------ |
| some elements of w_prev are 0             | those elements are left out of the mean | unaffected |
| all of w_prev is 0, w_t == w_prev         | 0.0                                 | 0.0    |
| all of w_prev is 0, w_t != w_prev         | 1.0                                 | 1.0    |

The last row measures the change against the new weights instead (||w_t - 0|| / ||w_t|| = 1):
a layer that grew from nothing is counted as entirely new. Non-finite weights (a diverged run)
give non-finite results; `aggregate.clean_curves` handles those as the authors did.
Arithmetic is in float64 (a float32 ratio overflows for tiny denominators, and a
million-element sum loses precision), so float32 and narrower weights never give inf.
"""

from __future__ import annotations

import torch

__all__ = ["rwc_mean_ratio", "rwc_l1", "weight_scales_tensor"]


def _check_shapes(w_t: torch.Tensor, w_prev: torch.Tensor) -> None:
    if w_t.shape != w_prev.shape:
        raise ValueError(f"weight shapes differ: {tuple(w_t.shape)} vs {tuple(w_prev.shape)}")


def _from_scratch(change: torch.Tensor) -> torch.Tensor:
    """RWC of a layer whose previous weights were all zero: 1.0 if it changed, else 0.0."""
    return (change.abs().sum(dtype=torch.float64) > 0).to(torch.float64)


def rwc_mean_ratio_tensor(w_t: torch.Tensor, w_prev: torch.Tensor) -> torch.Tensor:
    """`rwc_mean_ratio` as a 0-d float64 tensor on the weights' device (no host sync)."""
    _check_shapes(w_t, w_prev)
    prev = w_prev.detach().to(torch.float64)
    change = (w_t.detach().to(torch.float64) - prev).abs()
    prev = prev.abs()
    nonzero = prev != 0
    count = nonzero.sum()
    ratios = torch.where(nonzero, change / torch.where(nonzero, prev, torch.ones_like(prev)), 0.0)
    mean = ratios.sum(dtype=torch.float64) / count.clamp(min=1)
    return torch.where(count > 0, mean, _from_scratch(change))


def rwc_l1_tensor(w_t: torch.Tensor, w_prev: torch.Tensor) -> torch.Tensor:
    """`rwc_l1` as a 0-d float64 tensor on the weights' device (no host sync)."""
    _check_shapes(w_t, w_prev)
    change = w_t.detach().to(torch.float64) - w_prev.detach().to(torch.float64)
    prev_norm = w_prev.detach().abs().sum(dtype=torch.float64)
    change_norm = change.abs().sum(dtype=torch.float64)
    ratio = change_norm / torch.where(prev_norm > 0, prev_norm, torch.ones_like(prev_norm))
    return torch.where(prev_norm > 0, ratio, _from_scratch(change))


def rwc_mean_ratio(w_t: torch.Tensor, w_prev: torch.Tensor) -> float:
    """Mean over elements of |w_t - w_prev| / |w_prev| (the authors' code); zeros of w_prev
    are left out of the mean, see the module docstring."""
    return float(rwc_mean_ratio_tensor(w_t, w_prev))


def rwc_l1(w_t: torch.Tensor, w_prev: torch.Tensor) -> float:
    """||w_t - w_prev||_1 / ||w_prev||_1 (the paper's equation); a zero previous norm gives
    1.0 if the layer changed and 0.0 if not."""
    return float(rwc_l1_tensor(w_t, w_prev))


def weight_scales_tensor(w_prev: torch.Tensor) -> torch.Tensor:
    """What each RWC form divides by, as a float64 tensor [mean |w_prev|, mean over non-zero
    elements of 1 / |w_prev|] (0 where there is none). A change dw independent of the
    weights, such as DP noise, then has E[rwc_l1] = E|dw| / the first and
    E[rwc_mean_ratio] = E|dw| * the second: how RWC is predicted from the noise alone."""
    prev = w_prev.detach().to(torch.float64).abs()
    nonzero = prev != 0
    inverse = torch.where(nonzero, 1.0 / torch.where(nonzero, prev, torch.ones_like(prev)), 0.0)
    count = nonzero.sum().clamp(min=1)
    return torch.stack([prev.mean() if prev.numel() else prev.sum(),
                        inverse.sum(dtype=torch.float64) / count])
