"""`dpscope runs`: where every run of a study stands, as a table or as JSON for scripts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from dpscope.study.progress import fmt
from dpscope.study.store import STORE_FILE, ResultsStore, RunRecord

_STATUS_STYLE = {"finished": "green", "failed": "red", "running": "cyan", "pending": "dim"}


def open_store(study_dir: Path) -> ResultsStore:
    """The store of an existing study folder (a ConfigError when there is none)."""
    return ResultsStore(Path(study_dir) / STORE_FILE, create=False)


def run_rows(study_dir: Path) -> list[dict[str, Any]]:
    """One plain dict per run, in spec order. `epsilon` is the spent one when finished."""
    with open_store(study_dir) as store:
        return [_row(record) for record in store.runs()]


def _row(record: RunRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "status": record.status,
        "epsilon": record.epsilon if record.status == "finished" else record.config.get("epsilon"),
        "target_epsilon": record.config.get("epsilon"),
        "test_accuracy": record.test_accuracy,
        "test_balanced_accuracy": record.test_balanced_accuracy,
        "test_auc": record.test_auc,
        "seconds": record.seconds,
        "wall_seconds": record.wall_seconds,
        "attempts": record.attempts,
        "error": record.error,
        "config": record.config,
    }


def runs_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("run")
    table.add_column("status")
    for name in ("epsilon", "test acc", "test auc", "seconds"):
        table.add_column(name, justify="right")
    errors = any(row["error"] for row in rows)
    if errors:
        table.add_column("error", overflow="fold")
    for row in rows:
        style = _STATUS_STYLE.get(row["status"], "")
        epsilon = "non-private" if row["target_epsilon"] is None and row["epsilon"] is None \
            else fmt(row["epsilon"], 2)
        cells = [row["id"], f"[{style}]{row['status']}[/{style}]", epsilon,
                 fmt(row["test_accuracy"]), fmt(row["test_auc"]), fmt(row["seconds"], 1)]
        table.add_row(*cells, *([row["error"] or ""] if errors else []))
    return table
