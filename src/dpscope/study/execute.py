"""Executing one study run, wherever it lands: in the study's process, a worker process or Ray.

`run_one` decides under the run's lock what the run needs (nothing, resume from its checkpoint,
or a fresh start), so a worker left over from a killed study can never write a run folder at
the same time as its successor. It returns plain data, errors included, so every backend
reports results the same way and nothing depends on pickling exceptions.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import json
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpscope.config import RunConfig
from dpscope.errors import ConfigError, DpscopeError
from dpscope.run_folder import RunFolder

PARENT_POLL_S = 0.5
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class RunTask:
    """Everything a worker needs, as plain picklable values."""

    run_id: str
    run_dir: str
    config_json: str  # the planned RunConfig
    threads: int  # used when the planned config leaves `threads` unset
    parent_pid: int | None = None  # exit when this process goes away (local worker processes)


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    summary: dict[str, Any] | None  # None when the run failed
    error: str | None
    traceback: str | None
    wall_seconds: float
    resumed_from_epoch: int | None


def run_one(task: RunTask) -> RunOutcome:
    """Train, resume or just read back one run; never raises for a failing run."""
    if task.parent_pid is not None:
        _exit_with_parent(task.parent_pid)
    started = time.perf_counter()
    resumed_from = None
    try:
        with _run_lock(Path(task.run_dir)):
            summary, resumed_from = _train_or_resume(task)
        return RunOutcome(task.run_id, summary, None, None, time.perf_counter() - started,
                          resumed_from)
    except Exception as error:  # a failed run is a result to record, not a crash of the study
        return RunOutcome(task.run_id, None, one_line_error(error), traceback.format_exc(),
                          time.perf_counter() - started, resumed_from)


def _train_or_resume(task: RunTask) -> tuple[dict[str, Any], int | None]:
    from dpscope.train import resume, train  # heavy: only where runs execute

    planned = RunConfig.model_validate_json(task.config_json)
    config = planned if planned.threads else planned.model_copy(update={"threads": task.threads})
    folder = RunFolder(Path(task.run_dir))
    if folder.is_finished() or folder.has_checkpoint():
        _check_same_run(folder, planned)
    if folder.is_finished():
        return json.loads(folder.summary_path.read_text()), None
    if folder.has_checkpoint():
        epoch = int(folder.load_checkpoint()["epoch"])
        return resume(folder.path), epoch
    # a run killed before its first checkpoint starts again; drop the epoch line it may have left
    folder.metrics_path.unlink(missing_ok=True)
    return train(config, run_dir=folder.path), None


def _check_same_run(folder: RunFolder, planned: RunConfig) -> None:
    stored, wanted = (_resolved(config) for config in (folder.read_config(), planned))
    changed = sorted(k for k in wanted if k != "threads" and stored.get(k) != wanted[k])
    if changed:
        raise ConfigError(f"run folder {folder.path} holds a run with other options "
                          f"({', '.join(changed)}); move it away to rerun")


def _resolved(config: RunConfig) -> dict[str, Any]:
    """The options as the run applies them: `auto` input statistics as fixed or train, so a
    non-private run from before the option is the same run, a private one is not."""
    return {**config.model_dump(mode="json"), "input_normalization": config.input_statistics}


def one_line_error(error: BaseException) -> str:
    if isinstance(error, DpscopeError):
        return str(error)
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


class _run_lock:
    """An exclusive lock beside the run folder, held while the run trains (blocks, then proceeds)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir.parent / f".{run_dir.name}.lock"

    def __enter__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a")
        fcntl.flock(self._handle, fcntl.LOCK_EX)

    def __exit__(self, *exc) -> None:
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()


_watching: set[int] = set()


def _exit_with_parent(parent_pid: int) -> None:
    """A worker whose study was killed stops at once (Linux) or within PARENT_POLL_S,
    instead of training on beside the study that replaces it."""
    if parent_pid in _watching:
        return
    _watching.add(parent_pid)
    _kill_me_with_parent()
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="dpscope-parent-watch", daemon=True).start()


def _kill_me_with_parent() -> None:
    """Linux: ask the kernel to SIGKILL this process when its parent dies (PR_SET_PDEATHSIG).

    Safe for pool workers: they are spawned by the thread running the study, which outlives
    the pool."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # the polling thread still stops it
