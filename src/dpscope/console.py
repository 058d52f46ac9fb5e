"""Terminal output for runs: a rich progress bar per epoch and one line per epoch."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dpscope.config import RunConfig

console = Console()
err_console = Console(stderr=True)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    parts = [
        f"epoch {record['epoch'] + 1:>3}/{epochs}",
        f"train loss {_fmt(record.get('train_loss'))}",
        f"val acc {_fmt(record.get('val_accuracy'))}",
    ]
    if record.get("val_auc") is not None:
        parts.append(f"val auc {_fmt(record['val_auc'])}")
    if record.get("epsilon") is not None:
        parts.append(f"eps {_fmt(record['epsilon'], 3)}")
    parts.append(f"{record['seconds']:.1f} s")
    return "  ".join(parts)


class RichReporter:
    """Progress bar per epoch (only on a terminal) and a summary line per epoch."""

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._task = None
        self._epochs = 0

    def start(self, config: RunConfig, run_dir: Path, description: str) -> None:
        self._epochs = config.epochs
        console.print(f"[bold]dpscope train[/bold] -> {run_dir}")
        console.print(description, highlight=False)

    def epoch_start(self, epoch: int, epochs: int, steps: int | None) -> None:
        if not console.is_terminal:
            return
        self._progress = Progress(
            TextColumn(f"epoch {epoch + 1}/{epochs}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=console, transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("steps", total=steps)

    def step_done(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)

    def epoch_end(self, record: dict[str, Any]) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        console.print(epoch_line(record, self._epochs), highlight=False)
        sys.stdout.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        line = (f"test accuracy {_fmt(summary['test_accuracy'])}  "
                f"balanced {_fmt(summary['test_balanced_accuracy'])}")
        if summary.get("test_auc") is not None:
            line += f"  auc {_fmt(summary['test_auc'])}"
        if summary.get("epsilon") is not None:
            line += f"  epsilon {_fmt(summary['epsilon'], 3)} (delta {summary['delta']:.1e})"
        if summary.get("test_accuracy_last_iterate") is not None:
            line += (f"  ({summary['evaluated_weights']}; last iterate "
                     f"{_fmt(summary['test_accuracy_last_iterate'])})")
        line += f"  {summary['seconds']:.1f} s  peak {summary['peak_memory_mb']:.0f} MB"
        if summary.get("stopped_early"):
            console.print(f"[yellow]stopped early:[/yellow] {summary['stopped_early']}")
        console.print(f"[bold green]done[/bold green]  {line}", highlight=False)
