"""The recorded dynamics of one run: per layer and per interval, and `dynamics.json`.

Layout of `dynamics.json` (format "dpscope.dynamics/1"): the tracked layers in model order
(name, shape, numel), the interval ("epoch" or "step", every N), one entry per recorded
point (epoch and step at its end, steps and examples it covered), `layer_metrics[name]` as a
list over points of a list over layers, and `global_metrics[name]` as a list over points.
Undefined values (a private-only metric in a non-private run, no clipped example in an
interval) are `null` in the file and NaN in memory.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dpscope.errors import DataError
from dpscope.io import write_json_atomic

__all__ = [
    "DYNAMICS_FILE", "LAYER_METRICS", "GLOBAL_METRICS", "LayerInfo", "DynamicsSeries",
    "load_dynamics", "block_of", "row_nanmean",
]

DYNAMICS_FILE = "dynamics.json"
FORMAT = "dpscope.dynamics/1"

# metric name -> meaning (units); every one is averaged over the recorded interval
LAYER_METRICS: dict[str, str] = {
    "rwc_mean_ratio": "mean over elements of |w_t - w_prev| / |w_prev| (dimensionless)",
    "rwc_l1": "||w_t - w_prev||_1 / ||w_prev||_1 (dimensionless)",
    "grad_norm": "L2 gradient norm of the layer's weight: per-example mean (private) or of "
                 "the batch-mean gradient (non-private); see `grad_norm_source`",
    "clipped_share": "mean over clipped examples of the layer's share of the example's "
                     "squared gradient norm (fraction, flat clipping)",
    "clipped_fraction_per_layer": "fraction of examples whose layer gradient norm exceeds "
                                  "the layer's own bound (per-layer clipping only)",
    "noise_to_signal": "noise_std * sqrt(numel) / L2 norm of the clipped gradient sum "
                       "(ratio of interval means; private runs only)",
    "weight_abs_mean": "mean over elements of |w_prev| at the interval's start (rwc_l1's "
                       "denominator per element; weight units)",
    "weight_inv_abs_mean": "mean over non-zero elements of 1 / |w_prev| at the interval's start "
                           "(what rwc_mean_ratio weighs a change by; 1 / weight units)",
}
GLOBAL_METRICS: dict[str, str] = {
    "clipped_fraction": "fraction of examples whose whole-model gradient norm exceeds "
                        "max_grad_norm (private runs only)",
}


@dataclass(frozen=True)
class LayerInfo:
    name: str  # parameter name, e.g. "stages.0.1.conv2.weight"
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def label(self) -> str:
        """The module path, which names the layer in figures."""
        return self.name.removesuffix(".weight")


def block_of(name: str) -> str:
    """The block a parameter belongs to, for grouping: its module path up to and including
    the first numeric component ("stages.1.0.conv1.weight" -> "stages.1", "fc.weight" -> "fc")."""
    parts = name.removesuffix(".weight").removesuffix(".bias").split(".")
    for i, part in enumerate(parts):
        if re.fullmatch(r"\d+", part):
            return ".".join(parts[: i + 1])
    return parts[0]


@dataclass
class DynamicsSeries:
    """Per-layer learning dynamics of one run, filled by `WeightChangeTracker`."""

    layers: list[LayerInfo]
    interval_unit: Literal["epoch", "step"] = "epoch"
    interval_every: int = 1
    points: list[dict[str, int]] = field(default_factory=list)  # epoch, step, steps, examples
    layer_metrics: dict[str, list[list[float]]] = field(default_factory=dict)  # (T, L)
    global_metrics: dict[str, list[float]] = field(default_factory=dict)  # (T,)
    grad_norm_source: list[str] = field(default_factory=list)  # per point

    def __post_init__(self) -> None:
        for name in LAYER_METRICS:
            self.layer_metrics.setdefault(name, [])
        for name in GLOBAL_METRICS:
            self.global_metrics.setdefault(name, [])

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def __len__(self) -> int:
        return len(self.points)

    def matrix(self, metric: str) -> np.ndarray:
        """(layers, points) float64 array of a layer metric; NaN where undefined."""
        if metric not in LAYER_METRICS:
            raise KeyError(f"unknown layer metric {metric!r}; known: {', '.join(LAYER_METRICS)}")
        if self.points and not self.layer_metrics[metric]:  # recorded before the metric existed
            return np.full((len(self.layers), len(self.points)), np.nan)
        values = np.asarray(self.layer_metrics[metric], dtype=np.float64)
        return values.reshape(len(self.points), len(self.layers)).T

    def time_axis(self) -> np.ndarray:
        """The x axis of every curve: epochs (epoch intervals) or steps completed."""
        key = "epoch" if self.interval_unit == "epoch" else "step"
        return np.asarray([p[key] for p in self.points], dtype=np.int64)

    def rows(self) -> list[dict[str, Any]]:
        """Tidy records, one per (point, layer), with every metric as a column."""
        out = []
        for t, point in enumerate(self.points):
            shared = {**point, "point": t, "grad_norm_source": self.grad_norm_source[t]}
            shared.update({k: v[t] for k, v in self.global_metrics.items()})
            for depth, layer in enumerate(self.layers):
                row = {**shared, "layer": layer.name, "depth": depth, "block": block_of(layer.name)}
                row.update({k: v[t][depth] for k, v in self.layer_metrics.items()})
                out.append(row)
        return out

    def to_json(self) -> dict[str, Any]:
        """The `dynamics.json` content: non-finite values become null."""
        return self._as_dict(_finite_or_none)

    def to_state(self) -> dict[str, Any]:
        """The same structure with every float kept as it is (for checkpoints)."""
        return self._as_dict(float)

    def _as_dict(self, convert) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "interval": {"unit": self.interval_unit, "every": self.interval_every},
            "layers": [{"name": l.name, "shape": list(l.shape), "numel": l.numel} for l in self.layers],
            "points": [dict(p) for p in self.points],
            "layer_metrics": {k: [[convert(x) for x in row] for row in v]
                              for k, v in self.layer_metrics.items()},
            "global_metrics": {k: [convert(x) for x in v] for k, v in self.global_metrics.items()},
            "grad_norm_source": list(self.grad_norm_source),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "DynamicsSeries":
        """Inverse of `to_json` and of `to_state`."""
        if data.get("format") != FORMAT:
            raise DataError(f"not a {FORMAT} file (format {data.get('format')!r}); "
                            "re-record it with this version of dpscope")
        return cls(
            layers=[LayerInfo(l["name"], tuple(l["shape"])) for l in data["layers"]],
            interval_unit=data["interval"]["unit"],
            interval_every=int(data["interval"]["every"]),
            points=[dict(p) for p in data["points"]],
            layer_metrics={k: [[_none_to_nan(x) for x in row] for row in v]
                           for k, v in data["layer_metrics"].items()},
            global_metrics={k: [_none_to_nan(x) for x in v]
                            for k, v in data["global_metrics"].items()},
            grad_norm_source=list(data["grad_norm_source"]),
        )

    def save(self, run_dir: Path) -> Path:
        """Write `dynamics.json` into `run_dir` atomically; returns its path."""
        path = Path(run_dir) / DYNAMICS_FILE
        write_json_atomic(path, self.to_json())
        return path


def row_nanmean(values: np.ndarray) -> np.ndarray:
    """Mean of each row over its finite values; NaN for a row with none (no warning)."""
    finite = np.isfinite(values)
    counts = finite.sum(axis=1)
    sums = np.where(finite, values, 0.0).sum(axis=1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def load_dynamics(run_dir: Path) -> DynamicsSeries:
    """Read a run's `dynamics.json` (`run_dir` may also be the file itself)."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / DYNAMICS_FILE
    if not path.exists():
        raise DataError(f"{path} not found; train with dynamics tracking on "
                        "(track_dynamics=True) to record it")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON ({error.msg}); re-record the run") from None
    return DynamicsSeries.from_json(data)


def _finite_or_none(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _none_to_nan(x: float | None) -> float:
    return math.nan if x is None else float(x)
