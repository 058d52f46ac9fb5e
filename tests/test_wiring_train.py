"""Runs trained with groups, imbalance, input perturbation and dynamics tracking."""

from __future__ import annotations

import json

import pytest
from loop_helpers import CrashAtEpoch

from dpscope.config import RunConfig
from dpscope.fairness import GAPS, RATES
from dpscope.train import resume, train

OPTIONS = dict(dataset="digits", model="mlp", epochs=2, threads=1, batch_size=128, lr=0.1,
               epsilon=8.0, minority_group="8", majority_share=0.9, perturb="dp_pix:eps=2,b=4",
               dynamics_every_steps=3)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wired") / "run"
    return folder, train(RunConfig(**OPTIONS), run_dir=folder)


@pytest.mark.slow
def test_summary_holds_fairness_imbalance_and_perturbation(run):
    folder, summary = run
    assert json.loads((folder / "summary.json").read_text()) == summary
    fairness = summary["fairness"]
    assert set(fairness["gaps"]) == set(GAPS)
    assert set(fairness["groups"]) == {str(d) for d in range(10)}
    for group in fairness["groups"].values():
        assert set(RATES) <= set(group) and {"count", "positives", "per_class_accuracy"} <= set(group)
    assert fairness["bootstrap"]["n_resamples"] == 200
    assert summary["imbalance"]["train"]["group_share"] == pytest.approx(0.1, abs=1e-12)
    assert fairness["groups"]["8"]["count"] * 2 == fairness["n_examples"]  # balanced test set
    assert summary["perturbation"]["perturbed_splits"] == ["train"]
    assert summary["perturbation"]["guarantee"]["epsilon"] == 2.0


@pytest.mark.slow
def test_group_accuracy_agrees_with_the_loop_per_class_accuracy(run):
    _, summary = run
    for name, group in summary["fairness"]["groups"].items():
        assert group["accuracy"]["value"] == pytest.approx(summary["per_class_accuracy"][name])


@pytest.mark.slow
def test_dynamics_recorded_at_the_configured_interval(run):
    folder, summary = run
    data = json.loads((folder / "dynamics.json").read_text())
    assert data["interval"] == {"unit": "step", "every": 3}
    assert json.loads((folder / "config.json").read_text())["config"]["dynamics_every_steps"] == 3


@pytest.mark.slow
def test_resumed_run_rebuilds_the_same_data(run, tmp_path):
    _, summary = run
    folder = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        train(RunConfig(**OPTIONS), run_dir=folder, callbacks=[CrashAtEpoch(1)])
    resumed = resume(folder)
    for key in ("test_accuracy", "fairness", "imbalance", "perturbation", "epsilon"):
        assert resumed[key] == summary[key]
