"""What several runs on the same data spent together: their ledgers composed by dp_accounting.

Each run's epsilon covers that run alone. Tuning trains many runs on the same examples, reads
them and keeps one, so without a tuning-aware analysis (e.g. Papernot and Steinke 2022, which
needs a random number of runs) the procedure is only bounded by composing all of them. This
module reads the runs' folders and asks the accountant for that bound, conservatively:

- a finished dpscope run counts the steps its ledger recorded;
- an unfinished one counts its whole plan, because steps taken after its last saved ledger
  (the ledger is saved at each epoch's end) are not recorded anywhere;
- a benchmark Opacus twin counts the noise multiplier, sample rate and steps of its summary;
- a non-private run on the same data has no finite epsilon, so neither has the total;
- a private run whose inputs were normalised by its training images' mean and std (every run
  from before fixed input statistics, and any with `--input-normalization train`) released
  something no noise covers: it is composed, and flagged.

Validation metrics read to choose among runs are not covered by any of this: the validation
split is not trained on with DP.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from dpscope.errors import PrivacyError
from dpscope.privacy.accounting import Accountant, Segment, epsilon_for_segments
from dpscope.privacy.ledger import PrivacyLedger

if TYPE_CHECKING:
    from rich.table import Table

LEDGER_FILE = "privacy_ledger.json"


@dataclass(frozen=True)
class RunSpend:
    """One run's privacy events as counted here (`segments` empty and `private` False for a
    non-private run)."""

    path: str
    dataset: str | None
    delta: float | None
    segments: tuple[Segment, ...]
    private: bool
    counted_as: str  # "ledger", "plan (unfinished)", "summary", "non-private"
    input_statistics_covered: bool = True  # False: normalised by its private images' statistics

    @property
    def steps(self) -> int:
        return sum(steps for _, _, steps in self.segments)


def read_run_spend(run_dir: Path | str) -> RunSpend:
    """The privacy events of one run folder (see the module docstring for what is counted)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise PrivacyError(f"{path}: no such run folder")
    summary = _read_json(path / "summary.json")
    config = (_read_json(path / "config.json") or {}).get("config", {})
    ledger_record = _read_json(path / LEDGER_FILE)
    dataset = config.get("dataset") or (summary or {}).get("dataset")
    if summary is not None and "perturbation" in summary:
        raise PrivacyError(f"{path} trained on a private copy made by input perturbation: its "
                           "guarantee is the copy's record, not a ledger to compose; leave it out")
    covered = _input_statistics_covered(path, summary, config)
    if ledger_record is not None:
        spend = _from_ledger(path, dataset, ledger_record, finished=summary is not None)
        return dataclasses.replace(spend, input_statistics_covered=covered)
    private = (summary or {}).get("private")
    if private is None and config:
        private = config.get("epsilon") is not None or config.get("noise_multiplier") is not None
    if private is False:
        return RunSpend(str(path), dataset, None, (), False, "non-private")
    if summary is not None and all(k in summary for k in _SUMMARY_FIELDS):
        segment = (float(summary["sample_rate"]), float(summary["noise_multiplier"]),
                   int(summary["privacy_steps"]))
        return RunSpend(str(path), dataset, float(summary["delta"]), (segment,), True, "summary",
                        covered)
    raise PrivacyError(f"{path}: no {LEDGER_FILE} and no private summary, so its steps are not "
                       "recorded (a run stopped before its first epoch ended?); resume it to the "
                       "end, or leave it out if it never trained")


def _input_statistics_covered(path: Path, summary: dict[str, Any] | None, config: dict[str, Any]) -> bool:
    """Whether a private run's input statistics were data-independent: its summary says so, or
    its config does (a run or twin recording neither predates fixed statistics)."""
    record = (summary or {}).get("input_normalization")
    if record is not None:
        return bool(record["covered_by_privacy"])
    if not config:
        return False
    from dpscope.config import RunConfig  # pydantic only where a config must be read

    try:
        return RunConfig.from_saved(config).input_statistics_covered
    except ValueError as error:
        raise PrivacyError(f"{path / 'config.json'} is unreadable ({error}); restore it or leave "
                           "that run out") from None


# a summary without a ledger that still says what ran (the accuracy benchmark's Opacus twin)
_SUMMARY_FIELDS = ("noise_multiplier", "sample_rate", "privacy_steps", "delta")


def _from_ledger(path: Path, dataset: str | None, record: dict[str, Any], finished: bool) -> RunSpend:
    try:
        ledger = PrivacyLedger.from_dict(record["ledger"])
        delta = float(record["delta"])
        plan = record["plan"]
        planned = (float(plan["sample_rate"]), float(plan["noise_multiplier"]), int(plan["steps"]))
    except (KeyError, TypeError, ValueError) as error:
        raise PrivacyError(f"{path / LEDGER_FILE} is unreadable ({error}); it is not a "
                           "dpscope ledger") from None
    segments = list(ledger.segments)
    if finished:
        return RunSpend(str(path), dataset, delta, tuple(segments), True, "ledger")
    q, sigma, planned_steps = planned  # unfinished: the rest of its plan may have run, unsaved
    remaining = planned_steps - ledger.steps
    if remaining > 0:
        segments.append((q, sigma, remaining))
    return RunSpend(str(path), dataset, delta, tuple(segments), True, "plan (unfinished)")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PrivacyError(f"{path} is not valid JSON ({error}); restore it or leave that run "
                           "out") from None


@dataclass(frozen=True)
class ComposedSpend:
    """Epsilon of each run alone and of all of them together, at one delta."""

    runs: tuple[RunSpend, ...]
    alone: tuple[float, ...]  # each run's epsilon at `delta`
    epsilon: float
    delta: float
    accountant: str

    @property
    def uncovered_input_statistics(self) -> tuple[RunSpend, ...]:
        """Private runs whose inputs were normalised by their training images' statistics."""
        return tuple(run for run in self.runs if run.private and not run.input_statistics_covered)

    def to_dict(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon, "delta": self.delta, "accountant": self.accountant,
            "neighboring_relation": "add_or_remove_one",
            "runs": [{"path": run.path, "dataset": run.dataset, "counted_as": run.counted_as,
                      "steps": run.steps, "epsilon_alone": eps,
                      "input_statistics_covered": run.input_statistics_covered,
                      "segments": [{"sample_rate": q, "noise_multiplier": s, "steps": n}
                                   for q, s, n in run.segments]}
                     for run, eps in zip(self.runs, self.alone)],
        }


def compose_runs(run_dirs: Iterable[Path | str], delta: float | None = None,
                 accountant: Accountant = "pld") -> ComposedSpend:
    """Epsilon at `delta` of every run in `run_dirs` together (they must share a dataset);
    `delta` defaults to the runs' own when they agree."""
    runs = tuple(read_run_spend(d) for d in run_dirs)
    if not runs:
        raise PrivacyError("no runs to compose; pass the run folders")
    datasets = sorted({run.dataset for run in runs if run.dataset is not None})
    if len(datasets) > 1:
        raise PrivacyError(f"the runs were trained on different datasets ({', '.join(datasets)}); "
                           "composition bounds runs on the same data: compose each dataset's "
                           "runs separately")
    delta = _common_delta(runs) if delta is None else float(delta)
    alone = tuple(_epsilon(run.segments, delta, accountant) if run.private else math.inf
                  for run in runs)
    if not all(run.private for run in runs):
        total = math.inf
    else:
        total = _epsilon([seg for run in runs for seg in run.segments], delta, accountant)
    return ComposedSpend(runs, alone, total, delta, accountant)


def _common_delta(runs: Sequence[RunSpend]) -> float:
    deltas = sorted({run.delta for run in runs if run.delta is not None})
    if len(deltas) != 1:
        found = ", ".join(f"{d:g}" for d in deltas) or "none (no private run)"
        raise PrivacyError(f"the runs' deltas differ or are missing ({found}); pass --delta")
    return deltas[0]


def _epsilon(segments: Sequence[Segment], delta: float, accountant: Accountant) -> float:
    """Composition is commutative: steps with the same (q, sigma) merge into one segment, so
    many runs of one recipe cost one self-composition."""
    merged: dict[tuple[float, float], int] = {}
    for q, sigma, steps in segments:
        merged[(q, sigma)] = merged.get((q, sigma), 0) + steps
    return epsilon_for_segments([(q, s, n) for (q, s), n in merged.items()], delta, accountant)


def spend_table(composed: ComposedSpend) -> Table:
    """The runs, what was counted and each one's epsilon alone, as a rich table."""
    from rich.table import Table

    table = Table(header_style="bold")
    for column in ("run", "counted", "steps", "sample rate", "noise multiplier", "epsilon alone"):
        table.add_column(column, justify="left" if column in ("run", "counted") else "right")
    for run, eps in zip(composed.runs, composed.alone):
        rates = ", ".join(sorted({f"{q:.4g}" for q, _, _ in run.segments})) or "-"
        sigmas = ", ".join(sorted({f"{s:.4g}" for _, s, _ in run.segments})) or "-"
        table.add_row(Path(run.path).name, run.counted_as, str(run.steps), rates, sigmas, f"{eps:.4g}")
    return table
