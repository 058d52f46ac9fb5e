"""Running a study: plan its runs in the store, execute what is left, record every outcome.

Re-running the same spec continues it: finished runs are skipped, runs a killed study left
behind resume from their checkpoints, failed runs are reported and retried only when asked.
One study process at a time per study folder (a lock file says so).

The study folder (default `studies_out/<name>/` under the working directory, or `--out`):

    study.toml          the spec as last run
    results.sqlite      the results store (runs, epoch_metrics)
    runs/<run id>/      one run folder per run (config.json, metrics.jsonl, summary.json, ...)
    report.html         written by `dpscope report`, with figures/*.png
"""

from __future__ import annotations

import fcntl
import json
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from dpscope.errors import ConfigError
from dpscope.io import read_jsonl, write_text_atomic
from dpscope.run_folder import RunFolder
from dpscope.study.backends import BackendName, open_backend
from dpscope.study.execute import RunOutcome, RunTask, one_line_error
from dpscope.study.spec import PlannedRun, StudySpec
from dpscope.study.store import STORE_FILE, ResultsStore, RunRecord

DEFAULT_ROOT = Path("studies_out")
SPEC_COPY = "study.toml"
RUNS_FOLDER = "runs"


def default_study_dir(spec: StudySpec) -> Path:
    """studies_out/<name> under the working directory, like `runs/` for single runs."""
    return DEFAULT_ROOT / spec.name


def run_dir(study_dir: Path, run_id: str) -> Path:
    return Path(study_dir) / RUNS_FOLDER / run_id


class StudyProgress(Protocol):
    def start(self, total: int, done: int, todo: int, workers: int, threads: int) -> None: ...
    def run_done(self, record: RunRecord) -> None: ...
    def finish(self, result: "StudyResult") -> None: ...


class SilentProgress:
    def start(self, total, done, todo, workers, threads): pass
    def run_done(self, record): pass
    def finish(self, result): pass


@dataclass
class StudyResult:
    study_dir: Path
    total: int
    finished: list[str] = field(default_factory=list)  # in this call
    failed: list[str] = field(default_factory=list)  # in this call
    skipped_failed: list[str] = field(default_factory=list)  # failed before, not retried
    already_finished: int = 0
    wall_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped_failed


def run_study(spec: StudySpec, study_dir: Path | None = None, *, workers: int = 1,
              backend: BackendName = "local", retry_failed: bool = False,
              progress: StudyProgress | None = None) -> StudyResult:
    """Run every run of `spec` not yet finished into `study_dir` (default studies_out/<name>)."""
    study_dir = Path(study_dir) if study_dir else default_study_dir(spec)
    progress = progress or SilentProgress()
    planned = spec.runs()
    started = time.perf_counter()
    with _study_lock(study_dir), ResultsStore(study_dir / STORE_FILE) as store:
        _record_spec(store, spec, study_dir)
        store.add_planned([(r.id, r.position, r.config.model_dump_json()) for r in planned])
        store.requeue_interrupted()
        _adopt_finished_folders(store, study_dir, planned)
        records = {r.id: r for r in store.runs()}
        wanted = {"pending", "failed"} if retry_failed else {"pending"}
        todo = [run for run in planned if records[run.id].status in wanted]
        result = StudyResult(study_dir, len(planned))
        result.already_finished = sum(records[r.id].status == "finished" for r in planned)
        result.skipped_failed = [r.id for r in planned
                                 if records[r.id].status == "failed" and not retry_failed]
        if todo:
            _execute(store, study_dir, todo, workers, backend, progress, result)
        else:
            progress.start(len(planned), result.already_finished, 0, workers, 0)
        result.wall_seconds = time.perf_counter() - started
        progress.finish(result)
    return result


def _execute(store: ResultsStore, study_dir: Path, todo: list[PlannedRun], workers: int,
             backend_name: BackendName, progress: StudyProgress, result: StudyResult) -> None:
    backend = open_backend(backend_name, min(workers, len(todo)))
    threads = max(run.config.threads or backend.threads for run in todo)
    progress.start(result.total, result.already_finished, len(todo), backend.slots, threads)
    queue = list(todo)
    in_flight: dict[Future, PlannedRun] = {}
    try:
        while queue or in_flight:
            while queue and len(in_flight) < backend.slots:
                run = queue.pop(0)
                store.mark_running(run.id)
                task = RunTask(run.id, str(run_dir(study_dir, run.id).resolve()),
                               run.config.model_dump_json(), backend.threads)
                in_flight[backend.submit(task)] = run
            done, _ = wait(in_flight, timeout=1.0, return_when=FIRST_COMPLETED)
            for future in done:
                run = in_flight.pop(future)
                record = _record_outcome(store, study_dir, run, _outcome(future, run))
                (result.finished if record.status == "finished" else result.failed).append(run.id)
                progress.run_done(record)
    except BaseException:  # Ctrl-C or a crash of the study itself: in-flight runs stay resumable
        for run in in_flight.values():
            store.mark_pending(run.id)
        raise
    finally:
        backend.close()


def _outcome(future: Future, run: PlannedRun) -> RunOutcome:
    try:
        return future.result()
    except Exception as error:  # the worker process itself died (killed, out of memory)
        return RunOutcome(run.id, None, f"worker died: {one_line_error(error)}", None, 0.0, None)


def _record_outcome(store: ResultsStore, study_dir: Path, run: PlannedRun,
                    outcome: RunOutcome) -> RunRecord:
    epochs = read_jsonl(RunFolder(run_dir(study_dir, run.id)).metrics_path)
    if outcome.summary is not None:
        store.mark_finished(run.id, outcome.summary, epochs, outcome.wall_seconds,
                            outcome.resumed_from_epoch)
    else:
        store.mark_failed(run.id, outcome.error or "unknown error", outcome.traceback, epochs,
                          outcome.wall_seconds)
    record = store.run(run.id)
    assert record is not None
    return record


def _adopt_finished_folders(store: ResultsStore, study_dir: Path, planned: list[PlannedRun]) -> None:
    """A study killed after a run wrote summary.json but before the store heard of it."""
    records = {r.id: r for r in store.runs()}
    for run in planned:
        folder = RunFolder(run_dir(study_dir, run.id))
        if records[run.id].status != "finished" and folder.is_finished():
            store.mark_finished(run.id, json.loads(folder.summary_path.read_text()),
                                folder.metrics(), None, None)


def _record_spec(store: ResultsStore, spec: StudySpec, study_dir: Path) -> None:
    known = store.meta().get("name")
    if known and known != spec.name:
        raise ConfigError(f"{study_dir} holds study {known!r}, not {spec.name!r}; "
                          "choose another --out")
    store.set_meta(name=spec.name, description=spec.description, spec_path=str(spec.path),
                   spec_text=spec.text)
    write_text_atomic(study_dir / SPEC_COPY, spec.text)


class _study_lock:
    """One `dpscope study` per folder; the lock dies with its process, so no stale locks."""

    def __init__(self, study_dir: Path) -> None:
        self.path = Path(study_dir) / ".study.lock"

    def __enter__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a+")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.close()
            raise ConfigError(f"another dpscope study is running in {self.path.parent}; "
                              "wait for it or stop it first") from None

    def __exit__(self, *exc) -> None:
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
