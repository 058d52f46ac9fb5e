"""The training loop: run folder contents, exact resume, refusal to overwrite."""

import json

import pytest
import torch

from dpscope.config import make_run_config
from dpscope.errors import ConfigError
from dpscope.io import read_jsonl
from dpscope.train import resume, train
from loop_helpers import CrashAtEpoch

SMALL = dict(dataset="digits", model="mlp", epochs=3, batch_size=64, lr=0.05, threads=1)


def test_run_folder_holds_config_metrics_summary_checkpoint(tmp_path):
    summary = train(make_run_config(**SMALL), run_dir=tmp_path / "run")
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"config.json", "metrics.jsonl", "summary.json",
                                               "checkpoint.pt"}
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for key in ("dataset", "model", "test_accuracy", "test_balanced_accuracy", "per_class_accuracy",
                "test_auc", "seconds", "peak_memory_mb", "epochs", "seed", "epsilon", "delta"):
        assert key in summary
    assert summary["epsilon"] is None and summary["test_auc"] is None
    assert summary["test_accuracy"] > 0.8
    assert json.loads((run / "config.json").read_text())["config"]["model"] == "mlp"


def test_resumed_run_reproduces_uninterrupted_run(tmp_path):
    whole = train(make_run_config(**SMALL), run_dir=tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        train(make_run_config(**SMALL), run_dir=tmp_path / "cut", callbacks=[CrashAtEpoch(1)])
    assert len(read_jsonl(tmp_path / "cut" / "metrics.jsonl")) == 1
    resumed = resume(tmp_path / "cut")
    for key in ("test_accuracy", "test_loss", "per_class_accuracy", "steps"):
        assert resumed[key] == whole[key], key
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(read_jsonl(tmp_path / "cut" / "metrics.jsonl")) == strip(
        read_jsonl(tmp_path / "whole" / "metrics.jsonl"))
    final_whole = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)["model"]
    final_cut = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["model"]
    for name, tensor in final_whole.items():
        assert torch.equal(tensor, final_cut[name]), name


def test_new_run_refuses_to_overwrite_existing_run(tmp_path):
    train(make_run_config(**{**SMALL, "epochs": 1}), run_dir=tmp_path / "run")
    before = (tmp_path / "run" / "summary.json").read_bytes()
    with pytest.raises(ConfigError, match="--resume"):
        train(make_run_config(**{**SMALL, "epochs": 1}), run_dir=tmp_path / "run")
    assert (tmp_path / "run" / "summary.json").read_bytes() == before


def test_resume_of_finished_run_returns_its_summary(tmp_path):
    first = train(make_run_config(**{**SMALL, "epochs": 1}), run_dir=tmp_path / "run")
    assert resume(tmp_path / "run")["test_accuracy"] == first["test_accuracy"]


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="epochs"):
        make_run_config(epochs=0)
    with pytest.raises(ConfigError, match="epsilon or noise_multiplier"):
        make_run_config(epsilon=1.0, noise_multiplier=1.0)
    with pytest.raises(ConfigError, match="unknown_option"):
        make_run_config(unknown_option=3)


def test_new_run_discards_metrics_left_by_a_run_killed_before_its_first_checkpoint(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"epoch": 0, "stale": true}\n')
    train(make_run_config(**{**SMALL, "epochs": 1}), run_dir=tmp_path / "run")
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert len(rows) == 1 and "stale" not in rows[0]


def test_private_runs_default_to_a_dp_recipe_but_keep_given_options():
    private = make_run_config(epsilon=3.0)
    assert (private.batch_size, private.lr, private.momentum) == (256, 0.5, 0.0)
    assert make_run_config(epsilon=3.0, lr=0.1).lr == 0.1
    assert make_run_config().batch_size == 64
