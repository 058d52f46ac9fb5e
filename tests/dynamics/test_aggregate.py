import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from dpscope.dynamics.aggregate import clean_curves, cluster_curves, cluster_layers, knee_index
from dpscope.dynamics.series import DynamicsSeries, LayerInfo
from dpscope.errors import ConfigError, DataError


def planted_curves(per_family=(6, 7, 5), points=25, noise=0.01, seed=0):
    """Three families of RWC-like curves: fast decay, slow decay, rise-then-fall."""
    rng = np.random.default_rng(seed)
    t = np.arange(1, points + 1)
    families = [0.5 * np.exp(-t / 3), 0.25 * np.exp(-t / 15), 0.3 * t / points * np.exp(-t / 12) + 0.05]
    curves, truth = [], []
    for label, (size, base) in enumerate(zip(per_family, families)):
        for _ in range(size):
            curves.append(base * rng.uniform(0.9, 1.1) + rng.normal(0, noise, points))
            truth.append(label)
    order = rng.permutation(len(curves))
    return np.array(curves)[order], np.array(truth)[order]


def test_recovers_three_planted_families_and_the_elbow_picks_three():
    curves, truth = planted_curves()
    result = cluster_curves(curves, [f"l{i}" for i in range(len(curves))], outlier_std=None)
    assert result.k == 3 and result.k_elbow == 3
    assert "elbow" in result.k_reason
    assert adjusted_rand_score(truth, result.labels) == pytest.approx(1.0)
    assert result.k_silhouette == 3  # both rules agree on well separated families
    assert result.cluster_means.shape == (3, 25)
    assert result.coords_2d.shape == (len(curves), 2)
    assert len(result.inertia) == len(result.ks) == len(result.silhouette)
    assert np.isnan(result.silhouette[0]) and result.ks[0] == 1


def test_recovery_survives_the_default_outlier_cleaning():
    curves, truth = planted_curves(seed=3)
    result = cluster_curves(curves, [f"l{i}" for i in range(len(curves))])
    assert adjusted_rand_score(truth, result.labels) > 0.9


def test_forced_k_is_used_and_out_of_range_k_is_refused():
    curves, _ = planted_curves()
    names = [f"l{i}" for i in range(len(curves))]
    assert cluster_curves(curves, names, k=5).k == 5
    with pytest.raises(ConfigError, match="k=40"):
        cluster_curves(curves, names, k=40)


def test_clusters_are_numbered_by_mean_depth():
    curves = np.vstack([np.full((3, 5), 1.0), np.full((3, 5), 0.1)]) + np.linspace(0, 1e-3, 5)
    result = cluster_curves(curves, list("abcdef"), k=2, outlier_std=None)
    assert result.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_knee_of_a_hand_made_elbow_curve_and_none_for_a_straight_line():
    assert knee_index([1, 2, 3, 4, 5, 6], [100, 60, 20, 15, 12, 10]) == 2
    assert knee_index([1, 2, 3, 4], [4, 3, 2, 1]) is None
    assert knee_index([1, 2, 3], [5, 5, 5]) is None


def test_cleaning_replaces_infinite_values_with_the_layer_mean():
    curves = np.array([[1.0, np.inf, 3.0], [2.0, 2.0, np.nan]])
    cleaned = clean_curves(curves, outlier_std=None)
    assert cleaned.values.tolist() == [[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]]
    assert cleaned.nonfinite_replaced == 2


def test_cleaning_replaces_values_beyond_two_std_with_the_mean():
    row = np.array([1.0] * 9 + [11.0])  # mean 2, std 3: 11 is 3 std away
    cleaned = clean_curves(row[None, :])
    assert cleaned.values[0].tolist() == [1.0] * 9 + [2.0]
    assert cleaned.outliers_replaced == 1
    assert clean_curves(row[None, :], outlier_std=None).values[0, -1] == 11.0


def test_cleaning_drops_first_and_last_layer_when_asked():
    curves = np.arange(12.0).reshape(4, 3)
    cleaned = clean_curves(curves, drop_first_last=True, outlier_std=None)
    assert cleaned.kept.tolist() == [1, 2]
    assert cleaned.values.tolist() == curves[1:3].tolist()
    with pytest.raises(DataError, match="drop_first_last"):
        clean_curves(curves[:2], drop_first_last=True)


def test_cluster_layers_reads_a_series_and_reports_dropped_layers():
    curves, _ = planted_curves(per_family=(3, 3, 3), points=6)
    layers = [LayerInfo(f"block{i}.weight", (4, 4)) for i in range(len(curves))]
    series = DynamicsSeries(layers=layers)
    for t in range(curves.shape[1]):
        series.points.append({"epoch": t + 1, "step": t + 1, "steps": 1, "examples": 1})
        for metric in series.layer_metrics:
            series.layer_metrics[metric].append(curves[:, t].tolist())
    result = cluster_layers(series, drop_first_last=True)
    assert result.dropped == ["block0.weight", "block8.weight"]
    assert len(result.membership()) == 7
    assert result.to_json()["k"] == result.k


def test_too_few_layers_give_one_cluster():
    result = cluster_curves(np.array([[1.0, 2.0], [1.5, 2.5]]), ["a", "b"])
    assert result.k == 1 and "too few" in result.k_reason


def test_umap_is_optional():
    curves, _ = planted_curves()
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="umap-learn"):
            cluster_curves(curves, [str(i) for i in range(len(curves))], reduction="umap")
