"""Operating points of finished two-class runs: the validation-chosen threshold, the oracle, and
the argmax that the run itself reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dpscope.bench.operating_point import best_threshold, operating_points, run_operating_points
from dpscope.config import make_run_config
from dpscope.errors import ConfigError
from dpscope.train import train

REPO = Path(__file__).resolve().parents[2]


def _binary_npz(path: Path) -> Path:
    """Brighter images are class 1, with overlap, and class 1 is the majority."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 300), ("val", 80), ("test", 80)):
        labels = (rng.random(n) < 0.7).astype(np.int64)
        brightness = 90 + 50 * labels + rng.normal(0, 30, n)
        images = np.clip(brightness[:, None, None] + rng.normal(0, 40, (n, 8, 8)), 0, 255)
        arrays[f"{split}_images"] = images.astype(np.uint8)
        arrays[f"{split}_labels"] = labels[:, None]
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("op")
    data = _binary_npz(root / "binary.npz")
    options = dict(dataset=str(data), model="mlp", epochs=2, batch_size=32, lr=0.05, momentum=0.9,
                   threads=1)
    plain = train(make_run_config(**options), run_dir=root / "plain")
    averaged = train(make_run_config(**{**options, "lr": 0.5, "momentum": 0.0}, ema_decay=0.9,
                                     epsilon=8.0, max_grad_norm=1.0), run_dir=root / "ema")
    digits = train(make_run_config(dataset="digits", model="mlp", epochs=1, threads=1),
                   run_dir=root / "digits")
    return root, {"plain": plain, "ema": averaged, "digits": digits}


def test_best_threshold_maximises_the_score_and_sits_between_examples() -> None:
    gaps = np.array([-2.0, -1.0, 0.5, 1.0, 3.0])
    labels = np.array([0, 0, 0, 1, 1])
    t = best_threshold(gaps, labels)
    assert 0.5 < t < 1.0  # the one cut that separates the classes
    shifted = best_threshold(gaps - 10.0, labels)
    assert shifted == pytest.approx(t - 10.0)
    # ties: by accuracy, the cuts at 0.5, 2.5 and 4.5 below all score 4/6; the middle one is taken
    accuracy = lambda y, p: float(np.mean(y == p))  # noqa: E731
    gaps, labels = np.arange(6.0), np.array([0, 1, 0, 1, 0, 1])
    assert [accuracy(labels, (gaps > t).astype(int)) for t in (0.5, 2.5, 4.5)] == [4 / 6] * 3
    assert best_threshold(gaps, labels, score=accuracy) == pytest.approx(2.5)


@pytest.mark.parametrize("name", ["plain", "ema"])
def test_argmax_is_what_the_run_reported_and_the_oracle_bounds_the_rest(runs, name) -> None:
    root, summaries = runs
    points = operating_points(root / name)
    assert points["test_accuracy_argmax"] == pytest.approx(summaries[name]["test_accuracy"])
    assert points["test_auc"] == pytest.approx(summaries[name]["test_auc"], abs=1e-6)
    assert points["test_accuracy_oracle"] >= max(points["test_accuracy_argmax"],
                                                 points["test_accuracy_val_threshold"])
    assert 0.0 <= points["test_balanced_accuracy_val_threshold"] <= 1.0


def test_refuses_unfinished_and_multi_class_runs(runs, tmp_path) -> None:
    root, _ = runs
    with pytest.raises(ConfigError, match="2 classes|10 classes"):
        operating_points(root / "digits")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a finished dpscope run"):
        operating_points(tmp_path / "empty")
    with pytest.raises(ConfigError, match="no run folders"):
        run_operating_points([])


def test_script_prints_the_table_and_writes_json(runs, tmp_path) -> None:
    root, _ = runs
    out = tmp_path / "op.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "operating_point.py"),
                           str(root / "plain"), str(root / "ema"), "--json", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "mean of 2" in done.stdout
    record = json.loads(out.read_text())
    assert [row["run"] for row in record["rows"]] == ["plain", "ema"]
    refused = subprocess.run([sys.executable, str(REPO / "benchmarks" / "operating_point.py"),
                              str(tmp_path / "missing")], capture_output=True, text=True)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
