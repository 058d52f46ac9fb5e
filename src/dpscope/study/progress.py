"""Terminal output of a study: one overall progress bar (runs done, ETA) and a line per run."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from dpscope.study.runner import StudyResult
from dpscope.study.store import RunRecord


def fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def run_line(record: RunRecord) -> str:
    """One line per finished or failed run."""
    if record.status == "failed":
        return f"[red]failed[/red]  {record.id}  {record.error}"
    parts = [f"[green]done[/green]  {record.id}", f"acc {fmt(record.test_accuracy)}"]
    if record.test_auc is not None:
        parts.append(f"auc {fmt(record.test_auc)}")
    parts.append(f"eps {fmt(record.epsilon, 2)}" if record.epsilon is not None else "non-private")
    parts.append(f"{fmt(record.seconds, 1)} s")
    if record.resumed_from_epoch is not None:
        parts.append(f"(resumed at epoch {record.resumed_from_epoch})")
    return "  ".join(parts)


class RichStudyProgress:
    """The bar counts runs; rich estimates the time left from the runs done so far."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self._progress: Progress | None = None
        self._task = None

    def start(self, total: int, done: int, todo: int, workers: int, threads: int) -> None:
        text = f"{total} runs: {done} finished before, {todo} to run"
        if todo:
            text += f" ({workers} at once, {threads} threads each)"
        self.console.print(text, highlight=False)
        if not todo:
            return
        self._progress = Progress(
            TextColumn("runs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), console=self.console, transient=True)
        self._progress.start()
        self._task = self._progress.add_task("runs", total=todo)

    def run_done(self, record: RunRecord) -> None:
        self.console.print(run_line(record), highlight=False)
        if self._progress is not None:
            self._progress.advance(self._task)

    def finish(self, result: StudyResult) -> None:
        if self._progress is not None:
            self._progress.stop()
        line = (f"{result.already_finished + len(result.finished)}/{result.total} runs finished "
                f"in {result.study_dir} ({result.wall_seconds:.1f} s)")
        self.console.print(f"[bold]study[/bold] {line}", highlight=False)
        if result.already_finished + len(result.finished):
            self.console.print(f"report: dpscope report {result.study_dir}", highlight=False)
        if result.failed:
            self.console.print(f"[red]{len(result.failed)} failed[/red]: {', '.join(result.failed)}; "
                               "rerun with --retry-failed", highlight=False)
        if result.skipped_failed:
            self.console.print(f"[yellow]{len(result.skipped_failed)} failed before and skipped[/yellow]: "
                               f"{', '.join(result.skipped_failed)}; rerun with --retry-failed",
                               highlight=False)
