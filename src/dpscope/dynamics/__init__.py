"""Layer-wise learning dynamics: relative weight change (RWC) per layer during training,
with gradient, clipping and noise diagnostics, and their aggregation for deep networks.

    tracker = WeightChangeTracker()            # a training-loop callback
    series = load_dynamics(run_dir)            # what it wrote: dynamics.json
    clusters = cluster_layers(series)          # WeightScale: clean, reduce, k-means++
    analyze_runs([run_a, run_b], out_dir)      # figures and tables for `dpscope dynamics`

The analysis names (clustering with scikit-learn, figures with matplotlib) load on first
use, so a training run that only tracks pays for neither import.
"""

from importlib import import_module
from typing import Any

from dpscope.dynamics.rwc import rwc_l1, rwc_mean_ratio
from dpscope.dynamics.series import (
    GLOBAL_METRICS,
    LAYER_METRICS,
    DynamicsSeries,
    LayerInfo,
    block_of,
    load_dynamics,
)
from dpscope.dynamics.tracker import PER_LAYER_BOUNDS_KEY, WeightChangeTracker

_LAZY = {
    "dpscope.dynamics.aggregate": ("CleanedCurves", "LayerClusters", "clean_curves",
                                   "cluster_curves", "cluster_layers", "knee_index"),
    "dpscope.dynamics.analyze": ("RunDynamics", "analyze_runs", "dynamics_html", "load_run"),
    "dpscope.dynamics.plots": ("rwc_heatmap_figure", "block_curves_figure",
                               "cluster_curves_figure", "cluster_map_figure", "comparison_figure",
                               "privacy_figure", "save_figure", "figure_base64"),
}
_MODULE_OF = {name: module for module, names in _LAZY.items() for name in names}

__all__ = [
    "rwc_l1", "rwc_mean_ratio",
    "DynamicsSeries", "LayerInfo", "LAYER_METRICS", "GLOBAL_METRICS", "block_of", "load_dynamics",
    "WeightChangeTracker", "PER_LAYER_BOUNDS_KEY",
    *_MODULE_OF,
]


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        value = getattr(import_module(_MODULE_OF[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dpscope.dynamics' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
