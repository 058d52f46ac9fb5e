import csv
import json

import numpy as np
import pytest

from dpscope.dynamics import analyze_runs, dynamics_html, load_dynamics
from dpscope.dynamics.analyze import load_run
from dpscope.dynamics.series import DynamicsSeries, LayerInfo
from dpscope.errors import DataError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic_series(private: bool, layers: int = 9, points: int = 8, seed: int = 0) -> DynamicsSeries:
    """RWC curves in three depth families; private runs also carry clipping and noise values."""
    rng = np.random.default_rng(seed)
    infos = [LayerInfo(f"stages.{i // 3}.{i % 3}.conv.weight", (8, 8, 3, 3)) for i in range(layers)]
    series = DynamicsSeries(layers=infos)
    t = np.arange(1, points + 1)
    for step in t:
        rwc = [(0.3 + 0.2 * (i // 3)) * np.exp(-step / (2 + 4 * (i // 3))) * rng.uniform(0.95, 1.05)
               for i in range(layers)]
        nan = [float("nan")] * layers
        values = {
            "rwc_mean_ratio": rwc, "rwc_l1": [r / 3 for r in rwc],
            "grad_norm": list(rng.uniform(0.5, 2, layers)),
            "clipped_share": list(np.full(layers, 1 / layers)) if private else nan,
            "clipped_fraction_per_layer": nan,
            "noise_to_signal": list(rng.uniform(1, 5, layers)) if private else nan,
        }
        for metric, row in values.items():
            series.layer_metrics[metric].append([float(v) for v in row])
        series.global_metrics["clipped_fraction"].append(0.8 if private else float("nan"))
        series.points.append({"epoch": int(step), "step": int(step) * 10, "steps": 10, "examples": 640})
        series.grad_norm_source.append("per_example_mean" if private else "batch_mean_gradient")
    return series


@pytest.fixture
def two_runs(tmp_path):
    private, public = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    synthetic_series(True).save(private)
    (private / "summary.json").write_text(json.dumps({"epsilon": 8.0, "model": "resnet20",
                                                      "dataset": "cifar10"}))
    synthetic_series(False, seed=1).save(public)
    (public / "config.json").write_text(json.dumps({"config": {"epsilon": None, "model": "resnet20",
                                                               "dataset": "cifar10"}}))
    return [private, public]


def test_labels_come_from_summary_or_config(two_runs):
    assert load_run(two_runs[0]).label == "ε=8 · resnet20 · cifar10"
    assert load_run(two_runs[1]).label == "non-private · resnet20 · cifar10"


def test_dynamics_json_round_trips_nan_as_null(two_runs):
    text = (two_runs[1] / "dynamics.json").read_text()
    assert "NaN" not in text and "null" in text
    assert np.isnan(load_dynamics(two_runs[1]).matrix("noise_to_signal")).all()


@pytest.mark.slow
def test_analyze_runs_writes_figures_and_tables(two_runs, tmp_path):
    out = tmp_path / "analysis"
    result = analyze_runs(two_runs, out, k=None, drop_first_last=True)
    for path in result["figures"]:
        with open(path, "rb") as handle:
            data = handle.read()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, path
    names = {p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1] for p in result["figures"]}
    assert {"a/heatmap.png", "a/blocks.png", "a/clusters.png", "a/cluster_map.png",
            "a/privacy.png", "b/heatmap.png"} <= names
    assert "b/privacy.png" not in names  # no private diagnostics in a non-private run
    with open(out / "layers.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 18
    assert {r["cluster"] for r in rows if r["depth"] in ("0", "8")} == {""}  # dropped layers
    summary = json.loads((out / "dynamics_summary.json").read_text())
    first = summary["runs"][0]
    assert first["epsilon"] == 8.0 and first["clusters"]["k"] == result["runs"][0]["clusters"]["k"]
    assert first["clusters"]["k_reason"]
    assert first["mean_clipped_fraction"] == pytest.approx(0.8)


@pytest.mark.slow
def test_html_fragment_embeds_every_figure(two_runs):
    fragment = dynamics_html(two_runs[:1], k=3)  # one private run: 2 comparisons + 5 figures
    assert fragment.startswith('<section class="dpscope-dynamics">')
    assert fragment.count("data:image/png;base64,") == 2 + 5  # no noise figure: no sigma, lr
    assert "k=3 given by the caller" in fragment


def test_same_folder_names_are_told_apart(tmp_path, two_runs):
    other = tmp_path / "elsewhere" / "a"
    synthetic_series(True, seed=5).save(other)
    (other / "summary.json").write_text((two_runs[0] / "summary.json").read_text())  # a 2nd seed
    from dpscope.dynamics.analyze import _unique_names_and_titles
    runs = [load_run(two_runs[0]), load_run(other)]
    _unique_names_and_titles(runs)
    assert [r.name for r in runs] == ["a", "a-2"]
    assert runs[0].title != runs[1].title and runs[0].label == runs[1].label


def test_analyze_without_runs_or_with_empty_dynamics_is_refused(tmp_path):
    with pytest.raises(DataError, match="no run folder"):
        analyze_runs([], tmp_path)
    DynamicsSeries(layers=[LayerInfo("fc.weight", (2, 2))]).save(tmp_path / "empty")
    with pytest.raises(DataError, match="no recorded interval"):
        analyze_runs([tmp_path / "empty"], tmp_path / "out")


def test_a_k_too_large_for_a_run_names_the_run(two_runs, tmp_path):
    from dpscope.errors import ConfigError
    with pytest.raises(ConfigError, match=r"runs/a: k=40 is out of range"):
        analyze_runs(two_runs, tmp_path / "out", k=40)


def test_comparison_orders_runs_from_non_private_to_most_private(tmp_path):
    from dpscope.dynamics.analyze import _privacy_order
    infos = {"np": {"epsilon": None}, "e1": {"epsilon": 1.0}, "e8": {"epsilon": 8.0},
             "s2": {"epsilon": None, "noise_multiplier": 2.0}}
    fake = [type("R", (), {"info": info, "name": name})() for name, info in infos.items()]
    assert [r.name for r in sorted(fake, key=_privacy_order)] == ["np", "e8", "e1", "s2"]


def test_runs_sharing_a_label_are_averaged_into_one_comparison_line():
    from dpscope.dynamics.plots import _profiles, comparison_figure
    seeds = [synthetic_series(True, seed=s) for s in range(3)]
    profiles = _profiles(seeds, "rwc_l1")
    assert profiles.shape == (2, 3, 9)
    assert profiles[0, 1] == pytest.approx(np.nanmean(seeds[1].matrix("rwc_l1"), axis=1))
    fig = comparison_figure([("ε=8", s) for s in seeds] + [("non-private", synthetic_series(False))])
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["ε=8 (mean of 3 runs)", "non-private"]


def test_runs_of_one_epsilon_with_different_recipes_are_different_settings(tmp_path):
    from dpscope.dynamics.analyze import _split_labels_by_recipe
    from dpscope.dynamics.findings import finding_sentences, run_findings

    runs = []
    for name, summary in (("np", {"epsilon": None, "lr": 0.05}),
                          ("lr4-s0", {"epsilon": 8.0, "lr": 4.0}),
                          ("lr4-s1", {"epsilon": 8.0, "lr": 4.0}),
                          ("lr05", {"epsilon": 8.0, "lr": 0.5})):
        synthetic_series(summary["epsilon"] is not None, seed=len(runs)).save(tmp_path / name)
        (tmp_path / name / "summary.json").write_text(json.dumps(
            {**summary, "model": "resnet20", "dataset": "digits"}))
        runs.append(load_run(tmp_path / name))
    _split_labels_by_recipe(runs)
    assert [r.label for r in runs] == ["non-private · resnet20 · digits",
                                       "ε=8 · resnet20 · digits [lr=4.0]",
                                       "ε=8 · resnet20 · digits [lr=4.0]",
                                       "ε=8 · resnet20 · digits [lr=0.5]"]
    sentences = finding_sentences([run_findings(r.name, r.label, r.series, r.info) for r in runs])
    assert sentences[1].startswith("ε=8 · resnet20 · digits [lr=4.0] (2 runs)")
    assert [s.split(" vs ")[0] for s in sentences[3:]] == ["ε=8 [lr=4.0]", "ε=8 [lr=0.5]"]
