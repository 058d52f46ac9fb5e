"""The results store: one SQLite file per study, the index of its runs and their metrics.

Run folders stay the source of truth (the trained run writes them atomically); the store records
which runs exist, where each one stands and its headline numbers, so listing and reporting never
walk folders. Only the study's parent process writes it, each change in one short transaction,
in WAL mode with full sync: a killed process leaves the last committed state, never a torn one.
"""

from __future__ import annotations

import json
import math
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Literal

from dpscope.errors import ConfigError

Status = Literal["pending", "running", "finished", "failed"]
STORE_FILE = "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS study (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'finished', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    wall_seconds REAL,
    resumed_from_epoch INTEGER,
    error TEXT,
    traceback TEXT,
    test_accuracy REAL,
    test_balanced_accuracy REAL,
    test_auc REAL,
    test_loss REAL,
    epsilon REAL,
    delta REAL,
    seconds REAL,
    summary TEXT
);
CREATE TABLE IF NOT EXISTS epoch_metrics (
    run_id TEXT NOT NULL REFERENCES runs (id),
    epoch INTEGER NOT NULL,
    train_loss REAL,
    val_accuracy REAL,
    val_auc REAL,
    epsilon REAL,
    seconds REAL,
    record TEXT NOT NULL,
    PRIMARY KEY (run_id, epoch)
);
"""
_SUMMARY_COLUMNS = ("test_accuracy", "test_balanced_accuracy", "test_auc", "test_loss",
                    "epsilon", "delta", "seconds")
_EPOCH_COLUMNS = ("train_loss", "val_accuracy", "val_auc", "epsilon", "seconds")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _number(value: Any) -> float | None:
    """SQLite stores NaN as NULL anyway; say so explicitly."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


@dataclass(frozen=True)
class RunRecord:
    """One row of `runs`, with config and summary decoded."""

    id: str
    position: int
    config: dict[str, Any]
    status: Status
    attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    wall_seconds: float | None
    resumed_from_epoch: int | None
    error: str | None
    traceback: str | None
    test_accuracy: float | None
    test_balanced_accuracy: float | None
    test_auc: float | None
    test_loss: float | None
    epsilon: float | None
    delta: float | None
    seconds: float | None
    summary: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "RunRecord":
        values = dict(row)
        values["config"] = json.loads(values["config"])
        values["summary"] = json.loads(values["summary"]) if values["summary"] else None
        return cls(**values)


class ResultsStore:
    """The study's SQLite file. Use as a context manager, or call `close()`."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise ConfigError(f"{self.path.parent} is not a study folder: {STORE_FILE} is missing; "
                              "run `dpscope study SPEC` first")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        if create:
            self._db.executescript(_SCHEMA)  # each CREATE ... IF NOT EXISTS is atomic

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # study-level facts (name, spec text)
    def set_meta(self, **values: str) -> None:
        with self._transaction() as db:
            db.executemany("INSERT OR REPLACE INTO study (key, value) VALUES (?, ?)", values.items())

    def meta(self) -> dict[str, str]:
        return {row["key"]: row["value"] for row in self._db.execute("SELECT key, value FROM study")}

    # the plan
    def add_planned(self, runs: list[tuple[str, int, str]]) -> None:
        """Insert (id, position, config json) rows not yet known; refuse a changed config."""
        with self._transaction() as db:
            for run_id, position, config in runs:
                row = db.execute("SELECT config FROM runs WHERE id = ?", (run_id,)).fetchone()
                if row is None:
                    db.execute("INSERT INTO runs (id, position, config, status, created_at) "
                               "VALUES (?, ?, ?, 'pending', ?)", (run_id, position, config, _now()))
                    continue
                changed = _changed_options(json.loads(row["config"]), json.loads(config))
                if changed:
                    raise ConfigError(
                        f"run {run_id} in {self.path.parent} was run with other options "
                        f"({', '.join(changed)}); give the study a new name or --out, "
                        "or delete that run's folder and its row")
                db.execute("UPDATE runs SET position = ? WHERE id = ?", (position, run_id))

    def requeue_interrupted(self) -> list[str]:
        """Runs left `running` by a killed study go back to `pending` (they resume from checkpoint)."""
        with self._transaction() as db:
            ids = [r["id"] for r in db.execute("SELECT id FROM runs WHERE status = 'running'")]
            db.execute("UPDATE runs SET status = 'pending' WHERE status = 'running'")
        return ids

    # transitions
    def mark_running(self, run_id: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE runs SET status = 'running', attempts = attempts + 1, started_at = ?, "
                       "finished_at = NULL, error = NULL, traceback = NULL WHERE id = ?",
                       (_now(), run_id))

    def mark_pending(self, run_id: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE runs SET status = 'pending' WHERE id = ?", (run_id,))

    def mark_finished(self, run_id: str, summary: dict[str, Any], epochs: list[dict[str, Any]],
                      wall_seconds: float | None, resumed_from_epoch: int | None) -> None:
        """Status, summary numbers and every epoch's metrics, all in one transaction."""
        numbers = [_number(summary.get(column)) for column in _SUMMARY_COLUMNS]
        with self._transaction() as db:
            db.execute(
                "UPDATE runs SET status = 'finished', finished_at = ?, wall_seconds = ?, "
                "resumed_from_epoch = ?, error = NULL, traceback = NULL, summary = ?, "
                + ", ".join(f"{c} = ?" for c in _SUMMARY_COLUMNS) + " WHERE id = ?",
                (_now(), wall_seconds, resumed_from_epoch, json.dumps(summary, sort_keys=True),
                 *numbers, run_id))
            self._replace_epochs(db, run_id, epochs)

    def mark_failed(self, run_id: str, error: str, traceback: str | None,
                    epochs: list[dict[str, Any]], wall_seconds: float | None) -> None:
        with self._transaction() as db:
            db.execute("UPDATE runs SET status = 'failed', finished_at = ?, wall_seconds = ?, "
                       "error = ?, traceback = ? WHERE id = ?",
                       (_now(), wall_seconds, error, traceback, run_id))
            self._replace_epochs(db, run_id, epochs)

    @staticmethod
    def _replace_epochs(db: sqlite3.Connection, run_id: str, epochs: list[dict[str, Any]]) -> None:
        db.execute("DELETE FROM epoch_metrics WHERE run_id = ?", (run_id,))
        db.executemany(
            "INSERT INTO epoch_metrics (run_id, epoch, " + ", ".join(_EPOCH_COLUMNS)
            + ", record) VALUES (?, ?, " + ", ".join("?" for _ in _EPOCH_COLUMNS) + ", ?)",
            [(run_id, int(r["epoch"]), *(_number(r.get(c)) for c in _EPOCH_COLUMNS),
              json.dumps(r, sort_keys=True)) for r in epochs])

    # reading
    def runs(self) -> list[RunRecord]:
        rows = self._db.execute("SELECT * FROM runs ORDER BY position, id")
        return [RunRecord.from_row(row) for row in rows]

    def run(self, run_id: str) -> RunRecord | None:
        row = self._db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return RunRecord.from_row(row) if row else None

    def epoch_metrics(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT record FROM epoch_metrics WHERE run_id = ? ORDER BY epoch",
                                (run_id,))
        return [json.loads(row["record"]) for row in rows]

    def integrity_ok(self) -> bool:
        return self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _changed_options(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Options that differ; `threads` is how a run was executed, not what it is. The stored
    options are read as a RunConfig first, so an option dpscope gained after the run was
    recorded counts at its default rather than as a change."""
    old = _with_current_defaults(old)
    keys = sorted((old.keys() | new.keys()) - {"threads"})
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _with_current_defaults(stored: dict[str, Any]) -> dict[str, Any]:
    from pydantic import ValidationError

    from dpscope.config import RunConfig

    try:
        return RunConfig.model_validate(stored).model_dump(mode="json")
    except ValidationError:  # an option since removed: compare as stored, the difference shows
        return stored
