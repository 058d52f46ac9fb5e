"""What a report reads: the store's rows and each run folder's config, environment and metrics.

Nothing here trains or evaluates; a run folder that is missing or unreadable only leaves its
run without those details.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpscope.io import write_bytes_atomic
from dpscope.study.listing import open_store
from dpscope.study.runner import run_dir
from dpscope.study.store import RunRecord

# options that never define a curve: what is swept along it, and how runs were executed
_NOT_SERIES = {"epsilon", "noise_multiplier", "seed", "threads", "data_dir"}


@dataclass(frozen=True)
class RunView:
    record: RunRecord
    folder: Path
    environment: dict[str, Any]
    epochs: list[dict[str, Any]]

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def config(self) -> dict[str, Any]:
        return self.record.config

    @property
    def summary(self) -> dict[str, Any]:
        return self.record.summary or {}

    @property
    def private(self) -> bool:
        return self.config.get("epsilon") is not None or self.config.get("noise_multiplier") is not None

    @property
    def epsilon_key(self) -> float | None:
        """Where the run sits on the epsilon axis: its target, else the epsilon it spent."""
        if not self.private:
            return None
        target = self.config.get("epsilon")
        spent = self.record.epsilon
        value = target if target is not None else spent
        return None if value is None else round(float(value), 3)


@dataclass
class StudyData:
    """A study as the report sees it. `figure()` saves a PNG and returns the <img> for it."""

    dir: Path
    name: str
    description: str
    spec_text: str
    runs: list[RunView]
    figures: dict[str, Path] = field(default_factory=dict)

    @property
    def finished(self) -> list[RunView]:
        return [r for r in self.runs if r.record.status == "finished"]

    @property
    def figures_dir(self) -> Path:
        return self.dir / "figures"

    def series(self) -> dict[str, list[RunView]]:
        """Finished runs grouped into curves: by the options that vary among the private runs or
        among the non-private ones (besides epsilon and seed). Options that differ only between
        private and non-private runs (a larger batch and learning rate for DP-SGD) do not split
        a curve from its non-private reference."""
        runs = self.finished
        varying = sorted((_varying([r for r in runs if r.private])
                          | _varying([r for r in runs if not r.private])) - _NOT_SERIES)
        groups: dict[str, list[RunView]] = defaultdict(list)
        for run in runs:
            label = ", ".join(f"{k}={run.config.get(k)}" for k in varying) or "all runs"
            groups[label].append(run)
        return dict(groups)

    def figure(self, name: str, fig, alt: str) -> str:
        """Write figures/<name>.png and return an <img> embedding the same bytes."""
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=130, bbox_inches="tight", facecolor="white")
        data = buffer.getvalue()
        path = self.figures_dir / f"{name}.png"
        write_bytes_atomic(path, data)
        self.figures[name] = path
        encoded = base64.b64encode(data).decode("ascii")
        return (f'<img class="figure" alt="{html.escape(alt)}" '
                f'src="data:image/png;base64,{encoded}">')


def _varying(runs: list[RunView]) -> set[str]:
    keys = {k for r in runs for k in r.config}
    return {k for k in keys if len({repr(r.config.get(k)) for r in runs}) > 1}


def load_study(study_dir: Path) -> StudyData:
    study_dir = Path(study_dir)
    with open_store(study_dir) as store:
        meta = store.meta()
        records = store.runs()
        epochs = {r.id: store.epoch_metrics(r.id) for r in records}
    runs = [RunView(r, run_dir(study_dir, r.id), _environment(run_dir(study_dir, r.id)), epochs[r.id])
            for r in records]
    return StudyData(study_dir, meta.get("name", study_dir.name), meta.get("description", ""),
                     meta.get("spec_text", ""), runs)


def _environment(folder: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((folder / "config.json").read_text()).get("environment", {}))
    except (OSError, ValueError, AttributeError):
        return {}


def mean_and_spread(values: list[float | None]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count, ignoring missing values."""
    present = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not present:
        return math.nan, math.nan, 0
    mean = sum(present) / len(present)
    if len(present) == 1:
        return mean, 0.0, 1
    variance = sum((v - mean) ** 2 for v in present) / (len(present) - 1)
    return mean, math.sqrt(variance), len(present)
