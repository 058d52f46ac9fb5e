"""Layer-wise learning dynamics: relative weight change (RWC) per layer during training,
with gradient, clipping and noise diagnostics, and their aggregation for deep networks.

    tracker = WeightChangeTracker()            # a training-loop callback
    series = load_dynamics(run_dir)            # what it wrote: dynamics.json
    clusters = cluster_layers(series)          # WeightScale: clean, reduce, k-means++
    analyze_runs([run_a, run_b], out_dir)      # figures and tables for `dpscope dynamics`
"""

from dpscope.dynamics.aggregate import (
    CleanedCurves,
    LayerClusters,
    clean_curves,
    cluster_curves,
    cluster_layers,
    knee_index,
)
from dpscope.dynamics.analyze import RunDynamics, analyze_runs, dynamics_html, load_run
from dpscope.dynamics.plots import (
    block_curves_figure,
    cluster_curves_figure,
    cluster_map_figure,
    comparison_figure,
    figure_base64,
    privacy_figure,
    rwc_heatmap_figure,
    save_figure,
)
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

__all__ = [
    "rwc_l1", "rwc_mean_ratio",
    "DynamicsSeries", "LayerInfo", "LAYER_METRICS", "GLOBAL_METRICS", "block_of", "load_dynamics",
    "WeightChangeTracker", "PER_LAYER_BOUNDS_KEY",
    "CleanedCurves", "LayerClusters", "clean_curves", "cluster_curves", "cluster_layers", "knee_index",
    "RunDynamics", "analyze_runs", "dynamics_html", "load_run",
    "rwc_heatmap_figure", "block_curves_figure", "cluster_curves_figure", "cluster_map_figure",
    "comparison_figure", "privacy_figure", "save_figure", "figure_base64",
]
