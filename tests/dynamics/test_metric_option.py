"""`dpscope dynamics --metric`: which RWC form is clustered and drawn."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dpscope.cli import app
from dpscope.dynamics.series import DynamicsSeries, LayerInfo


def planted_run(path):
    """8 layers whose two RWC forms disagree: by ||dw||_1/||w||_1 layers 0-3 move little and
    4-7 much; by the per-element mean all move alike except layer 2, whose near-zero weights
    make its mean ratio spike."""
    rng = np.random.default_rng(0)
    series = DynamicsSeries(layers=[LayerInfo(f"stages.{i}.conv.weight", (4, 4, 3, 3)) for i in range(8)])
    for t in range(6):
        l1 = np.where(np.arange(8) < 4, 0.01, 0.1) * rng.uniform(0.95, 1.05, 8)
        mean = np.full(8, 0.05) * rng.uniform(0.95, 1.05, 8)
        mean[2] = 5.0
        for metric in series.layer_metrics:
            values = {"rwc_l1": l1, "rwc_mean_ratio": mean}.get(metric, np.full(8, np.nan))
            series.layer_metrics[metric].append([float(v) for v in values])
        series.global_metrics["clipped_fraction"].append(float("nan"))
        series.points.append({"epoch": t + 1, "step": 10 * (t + 1), "steps": 10, "examples": 640})
        series.grad_norm_source.append("batch_mean_gradient")
    series.save(path)
    return path


def membership(out):
    run = json.loads((out / "dynamics_summary.json").read_text())["runs"][0]
    groups = {}
    for name, cluster in run["clusters"]["membership"].items():
        groups.setdefault(cluster, []).append(int(name.split(".")[1]))
    return sorted(sorted(g) for g in groups.values())


@pytest.mark.slow
def test_the_metric_option_changes_what_is_clustered(tmp_path):
    run = planted_run(tmp_path / "run")
    for metric, expected in (("rwc_l1", [[0, 1, 2, 3], [4, 5, 6, 7]]),
                             ("rwc_mean", [[0, 1, 3, 4, 5, 6, 7], [2]])):
        out = tmp_path / metric
        result = CliRunner().invoke(app, ["dynamics", str(run), "--out", str(out), "--k", "2",
                                          "--metric", metric, "--quiet"])
        assert result.exit_code == 0, result.output
        assert membership(out) == expected, metric
        summary = json.loads((out / "dynamics_summary.json").read_text())
        assert summary["metric"] == {"rwc_l1": "rwc_l1", "rwc_mean": "rwc_mean_ratio"}[metric]
        # comparisons show both forms whichever is clustered
        assert (out / "comparison.png").is_file() and len(list(out.glob("comparison_*.png"))) == 1


def test_a_bad_metric_exits_2_with_one_line(tmp_path):
    run = planted_run(tmp_path / "run")
    result = CliRunner().invoke(app, ["dynamics", str(run), "--out", str(tmp_path / "o"),
                                      "--metric", "rwc_l2"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "rwc_l1 or rwc_mean" in lines[0]
    assert not (tmp_path / "o").exists()


def test_the_help_says_which_form_to_prefer():
    result = CliRunner().invoke(app, ["dynamics", "--help"], terminal_width=200)
    assert "prefer it" in result.output and "rwc_mean" in result.output


@pytest.mark.slow
def test_run_titles_with_brackets_are_printed_as_they_are(tmp_path):
    for name, lr in (("a", 0.5), ("b", 4.0)):
        planted_run(tmp_path / name)
        (tmp_path / name / "summary.json").write_text(json.dumps({"epsilon": 8.0, "lr": lr}))
    result = CliRunner().invoke(app, ["dynamics", str(tmp_path / "a"), str(tmp_path / "b"),
                                      "--out", str(tmp_path / "o"), "--k", "2"],
                                terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "dynamics ε=8 [lr=4.0]: k=2" in result.output
