"""Test accuracy of finished two-class runs at other decision thresholds than the argmax.

A private model can rank well (AUC) and still sit at the wrong operating point: DP noise moves
the logit offset, and a majority class pulls the decision its way. Two thresholds on the logit
gap (class 1 minus class 0) tell the two failures apart:

- chosen on the validation split by balanced accuracy (Youden's J), as a clinic would fix its
  operating point before looking at test data. It reads validation labels, so, like any
  hyper-parameter chosen there, it is not covered by epsilon;
- the test split's own best, an oracle: a ceiling on what any threshold could give, which no
  method can claim as its result.

Runs are read back from their folders (config and last checkpoint, the EMA when the run
evaluated one); nothing is trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from dpscope.errors import ConfigError


def evaluated_model_and_data(run_dir: Path) -> tuple[torch.nn.Module, Any]:
    """The weights a finished run reported (its EMA if it kept one) and its prepared dataset."""
    from dpscope.averaging import WeightAverage
    from dpscope.data import load_dataset
    from dpscope.dataset_prep import prepare_dataset
    from dpscope.models import build_model
    from dpscope.run_folder import RunFolder

    folder = RunFolder(Path(run_dir))
    if not folder.is_finished() or not folder.has_checkpoint():
        raise ConfigError(f"{run_dir}: not a finished dpscope run (summary.json and checkpoint.pt "
                          "are needed; the benchmark's Opacus twins keep no checkpoint)")
    config = folder.read_config()
    dataset = prepare_dataset(config, load_dataset(config.dataset, data_dir=config.data_dir,
                                                   seed=config.seed)).dataset
    if dataset.num_classes != 2:
        raise ConfigError(f"{run_dir}: {dataset.num_classes} classes; operating points are for "
                          "two-class tasks")
    model = build_model(config.model, in_channels=dataset.in_channels,
                        image_size=dataset.image_size, num_classes=dataset.num_classes)
    checkpoint = folder.load_checkpoint()
    model.load_state_dict(checkpoint["model"])
    if checkpoint.get("weight_average") is not None:
        average = WeightAverage(model, config.ema_decay)
        average.load_state_dict(checkpoint["weight_average"])
        model = average.module
    return model, dataset


def logit_gaps(model: torch.nn.Module, dataset: Any, split: Any) -> tuple[np.ndarray, np.ndarray]:
    """(logit of class 1 minus class 0, labels) of a split, in float64."""
    from dpscope.metrics import predict

    with torch.no_grad():
        logits = predict(model, dataset.normalize(split.images)).double()
    return (logits[:, 1] - logits[:, 0]).numpy(), split.labels.numpy()


def best_threshold(gaps: np.ndarray, labels: np.ndarray, score=balanced_accuracy_score) -> float:
    """The threshold t (predict class 1 where gap > t) that maximises `score`; among ties the
    middle one, so that it does not sit on an example."""
    edges = np.unique(gaps)
    candidates = np.concatenate([[edges[0] - 1.0], (edges[:-1] + edges[1:]) / 2, [edges[-1] + 1.0]])
    scores = np.array([score(labels, (gaps > t).astype(int)) for t in candidates])
    best = np.flatnonzero(scores == scores.max())
    return float(candidates[best[len(best) // 2]])


def operating_points(run_dir: Path | str) -> dict[str, Any]:
    """Test accuracy of one finished run at the argmax, the validation-chosen threshold and the
    test oracle, with the test AUC (which no threshold changes)."""
    model, dataset = evaluated_model_and_data(Path(run_dir))
    val_gaps, val_labels = logit_gaps(model, dataset, dataset.val)
    test_gaps, test_labels = logit_gaps(model, dataset, dataset.test)
    chosen = best_threshold(val_gaps, val_labels)
    oracle = best_threshold(test_gaps, test_labels,
                            score=lambda y, p: float(np.mean(y == p)))

    def accuracy(t: float) -> float:
        return float(np.mean((test_gaps > t).astype(int) == test_labels))

    return {
        "run": Path(run_dir).name,
        "test_auc": float(roc_auc_score(test_labels, test_gaps)),
        "test_accuracy_argmax": accuracy(0.0),
        "val_threshold": chosen,
        "test_accuracy_val_threshold": accuracy(chosen),
        "test_balanced_accuracy_val_threshold": float(
            balanced_accuracy_score(test_labels, (test_gaps > chosen).astype(int))),
        "test_accuracy_oracle": accuracy(oracle),
    }


COLUMNS = ("test_auc", "test_accuracy_argmax", "test_accuracy_val_threshold",
           "test_balanced_accuracy_val_threshold", "test_accuracy_oracle")


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample std of each column over runs."""
    out: dict[str, Any] = {}
    for column in COLUMNS:
        values = np.array([row[column] for row in rows])
        out[column] = {"mean": float(values.mean()),
                       "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
    return out


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    header = f"{'run':<60}{'AUC':>7}{'argmax':>8}{'val thr':>9}{'(bal)':>7}{'oracle':>8}"
    lines = [header] + [
        f"{row['run'][-60:]:<60}" + "".join(f"{row[c]:>{w}.3f}" for c, w in zip(COLUMNS, (7, 8, 9, 7, 8)))
        for row in rows]
    summary = summarize(rows)
    lines.append(f"{f'mean of {len(rows)}':<60}" + "".join(
        f"{summary[c]['mean']:>{w}.3f}" for c, w in zip(COLUMNS, (7, 8, 9, 7, 8))))
    return "\n".join(lines)


def run_operating_points(run_dirs: Sequence[Path | str], json_path: Path | None = None) -> dict[str, Any]:
    """Every run's operating points, their means, and the JSON record if asked."""
    from dpscope.io import write_json_atomic

    if not run_dirs:
        raise ConfigError("no run folders given")
    rows = [operating_points(d) for d in run_dirs]
    record = {"rows": rows, "summary": summarize(rows),
              "threshold_rule": "validation balanced accuracy (Youden's J) on the logit gap"}
    if json_path is not None:
        write_json_atomic(Path(json_path), record)
    return record
