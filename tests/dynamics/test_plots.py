import numpy as np

from dpscope.dynamics import block_of, cluster_layers
from dpscope.dynamics.plots import (_blocks, cluster_map_figure, comparison_figure,
                                    figure_base64, rwc_heatmap_figure, save_figure)
from dpscope.dynamics.series import DynamicsSeries, LayerInfo


def test_block_of_names_the_residual_stage_or_the_module():
    assert block_of("stages.1.0.conv1.weight") == "stages.1"
    assert block_of("stem.0.weight") == "stem.0"
    assert block_of("fc.weight") == "fc"
    assert block_of("fc.bias") == "fc"


def test_plain_sequential_layers_are_grouped_by_top_module():
    names = ["features.0", "features.3", "classifier.0", "classifier.2"]
    assert _blocks(names) == ["features", "features", "classifier", "classifier"]
    assert _blocks(["stages.0.0.conv1", "stages.0.1.conv1", "fc"]) == ["stages.0", "stages.0", "fc"]


def one_point_series() -> DynamicsSeries:
    series = DynamicsSeries(layers=[LayerInfo("a.weight", (3, 3)), LayerInfo("b.weight", (2, 3))])
    series.points.append({"epoch": 1, "step": 5, "steps": 5, "examples": 50})
    for metric in series.layer_metrics:
        series.layer_metrics[metric].append([0.5, 0.0])  # a zero RWC: no log of zero
    series.global_metrics["clipped_fraction"].append(float("nan"))
    series.grad_norm_source.append("batch_mean_gradient")
    return series


def test_figures_of_a_one_point_two_layer_run_are_written(tmp_path):
    series = one_point_series()
    clusters = cluster_layers(series)
    assert clusters.k == 1 and np.isfinite(clusters.coords_2d).all()
    path = save_figure(rwc_heatmap_figure(series), tmp_path / "deep" / "heatmap.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write left no temporary file
    assert len(figure_base64(cluster_map_figure(clusters))) > 1000
    assert len(figure_base64(comparison_figure([("x", series)]))) > 1000


def test_depth_ranges_compress_consecutive_depths():
    from dpscope.dynamics.plots import depth_ranges
    assert depth_ranges([7, 0, 1, 2, 5, 8]) == "0–2, 5, 7–8"
    assert depth_ranges(np.array([3])) == "3"


def test_tracking_does_not_import_sklearn_or_matplotlib():
    import subprocess
    import sys
    code = ("import sys; from dpscope.dynamics import WeightChangeTracker; "
            "print(any(m in sys.modules for m in ('sklearn', 'matplotlib')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
