"""The study subcommands of `dpscope`: study, report, runs. Thin functions over the library.

Registered on the typer app at the end of dpscope/cli.py. Nothing heavy is imported at module
level, so `dpscope --help` stays fast, and dpscope.cli is imported only when a command runs.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def _cli_errors(command):
    """dpscope.cli's one-line errors (exit 2), looked up late to avoid an import cycle."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from dpscope.cli import user_errors_exit_2

        return user_errors_exit_2(command)(*args, **kwargs)

    return wrapper


@_cli_errors
def study(
    spec: Annotated[Path, typer.Argument(help="study spec, a TOML file such as studies/quickstart.toml")],
    out: Annotated[Optional[Path], typer.Option(help="study folder (default studies_out/<name> in the working directory)")] = None,
    workers: Annotated[int, typer.Option(help="runs at once; each gets cores/workers torch threads")] = 1,
    backend: Annotated[str, typer.Option(help="local (this machine) or ray (the cluster in RAY_ADDRESS, else a local Ray)")] = "local",
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="run failed runs again (from their checkpoint when they have one)")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print nothing but errors")] = False,
) -> None:
    """Run every run of a study spec; rerun to continue an interrupted study."""
    from dpscope.console import console, err_console
    from dpscope.study.progress import RichStudyProgress
    from dpscope.study.runner import SilentProgress, run_study
    from dpscope.study.spec import load_spec

    loaded = load_spec(spec)
    progress = SilentProgress() if quiet else RichStudyProgress(console)
    try:
        result = run_study(loaded, out, workers=workers, backend=backend,  # type: ignore[arg-type]
                           retry_failed=retry_failed, progress=progress)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/yellow]: finished runs are recorded; "
                          "run the same command again to continue")
        raise typer.Exit(code=130) from None
    if not result.ok:
        raise typer.Exit(code=1)


@_cli_errors
def report(
    study_dir: Annotated[Path, typer.Argument(help="study folder written by `dpscope study`")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print nothing but errors")] = False,
) -> None:
    """Write report.html and figures/*.png for a study, from its results (never retrains)."""
    from dpscope.console import console
    from dpscope.study.report import build_report

    path = build_report(study_dir)
    if not quiet:
        console.print(f"[bold]report[/bold] -> {path}", highlight=False)


@_cli_errors
def runs(
    study_dir: Annotated[Path, typer.Argument(help="study folder written by `dpscope study`")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (a list of runs) instead of a table")] = False,
) -> None:
    """List a study's runs: status, epsilon, test accuracy and AUC, seconds."""
    from dpscope.console import console
    from dpscope.study.listing import run_rows, runs_table

    rows = run_rows(study_dir)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, sort_keys=True))
    else:
        console.print(runs_table(rows, title=str(study_dir)))
