"""`dpscope perturb` and `dpscope dynamics` as a user runs them: subprocesses, exit codes, files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from typer.testing import CliRunner

from dpscope.cli import app
from dpscope.config import RunConfig
from dpscope.data import load_dataset
from dpscope.errors import DataError
from dpscope.train import train


def dpscope(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dpscope", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def in_process(*args: str):
    """The same command through typer's runner (no interpreter start-up)."""
    return CliRunner().invoke(app, list(args))


def _one_error_line(result, fragment: str) -> None:
    assert getattr(result, "returncode", getattr(result, "exit_code", None)) == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_perturb_writes_a_private_copy_that_trains_like_the_original(tmp_path):
    out = tmp_path / "digits-private.npz"
    result = dpscope("perturb", "--dataset", "digits", "--mechanism", "gaussian:eps=2,delta=1e-5",
                     "--out", str(out), "--seed", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout and "(epsilon, delta)-DP per image" in result.stdout
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["perturbed_splits"] == ["train"] and record["seed"] == 3
    assert record["guarantee"]["delta"] == 1e-5
    original, copy = load_dataset("digits", seed=3), load_dataset(str(out))
    assert torch.equal(copy.test.images, original.test.images)
    assert torch.equal(copy.val.labels, original.val.labels)
    assert torch.equal(copy.train.labels, original.train.labels)
    assert not torch.equal(copy.train.images, original.train.images)


@pytest.mark.slow
def test_perturb_refuses_a_bad_mechanism_in_one_line(tmp_path):
    bad_spec = dpscope("perturb", "--dataset", "digits", "--mechanism", "laplace:eps=zero",
                       "--out", str(tmp_path / "x.npz"), cwd=tmp_path)
    _one_error_line(bad_spec, "eps must be a number")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args, fragment", [
    (["--mechanism", "laplace:eps=1", "--out", "x.csv"], "the private copy is an .npz file"),
    (["--mechanism", "blur:eps=1", "--out", "x.npz"], "unknown perturbation 'blur'"),
    (["--mechanism", "dp_pix:eps=1,b=3", "--out", "x.npz"], "does not divide the image size"),
])
def test_perturb_bad_input_exits_2_with_one_line(tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    _one_error_line(in_process("perturb", "--dataset", "digits", *args), fragment)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_dynamics_command_writes_figures_and_tables(tmp_path):
    run = tmp_path / "run"
    train(RunConfig(model="mlp", epochs=2, threads=1, track_dynamics=True), run_dir=run)
    out = tmp_path / "figures"
    result = dpscope("dynamics", str(run), "--out", str(out), "--k", "1", "--drop-first-last",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("layers.csv", "dynamics_summary.json", "comparison.png", "run/heatmap.png"):
        assert (out / name).is_file() and f"wrote {out / name}" in result.stdout
    written = json.loads((out / "dynamics_summary.json").read_text())
    assert written["k_forced"] == 1 and written["drop_first_last"] is True
    _one_error_line(in_process("dynamics", str(run), "--k", "0"), "--k must be at least 1")


def test_dynamics_command_refuses_a_folder_without_dynamics(tmp_path):
    (tmp_path / "plain").mkdir()
    _one_error_line(in_process("dynamics", str(tmp_path / "plain")),
                    "no dynamics.json; train the run with --track-dynamics")
    _one_error_line(in_process("dynamics", str(tmp_path / "absent")), "no such run folder")


def test_private_copy_of_an_npz_perturbs_the_file(tmp_path):
    from dpscope.private_copy import write_private_copy

    source = tmp_path / "tiny.npz"
    rng = np.random.default_rng(0)
    arrays = {f"{s}_images": rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
              for s in ("train", "val", "test")}
    arrays |= {f"{s}_labels": np.array([[0], [1]] * 3) for s in ("train", "val", "test")}
    np.savez(source, **arrays)
    record = write_private_copy(str(source), "laplace:eps=1", tmp_path / "copy.npz")
    assert record["source"] == str(source)
    with np.load(tmp_path / "copy.npz") as copy:
        assert np.array_equal(copy["test_images"], arrays["test_images"])
        assert not np.array_equal(copy["train_images"], arrays["train_images"])
    with pytest.raises(DataError):
        write_private_copy(str(tmp_path / "missing.npz"), "laplace:eps=1", tmp_path / "c2.npz")


@pytest.mark.slow
def test_train_flags_reach_the_run(tmp_path):
    run = tmp_path / "run"
    result = in_process("train", "--model", "mlp", "--epochs", "1", "--threads", "1", "--quiet",
                        "--minority-group", "3", "--majority-share", "0.99",
                        "--imbalance-test", "same_imbalance", "--perturb", "laplace:eps=4",
                        "--dynamics-every-steps", "4", "--out", str(run))
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())["config"]
    assert (config["groups"], config["track_dynamics"]) == ("class", True)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["imbalance"]["test"]["group_share"] == pytest.approx(0.01, abs=0.005)
    assert summary["perturbation"]["parameters"]["epsilon"] == 4.0
    assert "fairness" in summary and (run / "dynamics.json").is_file()
    _one_error_line(in_process("train", "--imbalance-test", "half"), "imbalance_test")
