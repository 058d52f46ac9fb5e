"""The tracker inside dpscope's own training loop (`RunConfig.track_dynamics`)."""

import pytest

from dpscope.config import RunConfig
from dpscope.dynamics import load_dynamics
from dpscope.train import train


@pytest.mark.slow
def test_training_with_track_dynamics_writes_one_point_per_epoch(tmp_path):
    config = RunConfig(dataset="digits", model="cnn", epochs=2, track_dynamics=True, threads=1)
    summary = train(config, run_dir=tmp_path / "run")
    assert summary["dynamics_file"] == "dynamics.json"
    series = load_dynamics(tmp_path / "run")
    assert [p["epoch"] for p in series.points] == [1, 2]
    assert series.grad_norm_source == ["batch_mean_gradient"] * 2
    assert (series.matrix("rwc_l1") > 0).all() and (series.matrix("grad_norm") > 0).all()
