"""Where study runs execute: `local` (this process, or N spawned worker processes) or `ray`.

A backend takes `RunTask`s and hands back futures of `RunOutcome`s; the study's parent process
alone writes the results store. Threads per run are chosen so that the runs at once fill the
cores without oversubscribing them.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Literal, Protocol

from dpscope.errors import ConfigError
from dpscope.study.execute import RunOutcome, RunTask, run_one

BackendName = Literal["local", "ray"]


def threads_per_run(cores: int, workers: int) -> int:
    """Torch threads for each of `workers` concurrent runs on `cores` cores."""
    return max(1, cores // max(1, workers))


def local_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Backend(Protocol):
    slots: int  # runs at once
    threads: int  # torch threads per run

    def submit(self, task: RunTask) -> Future: ...
    def close(self) -> None: ...


class InProcessBackend:
    """One run at a time in the study's own process: no start-up cost, same results."""

    def __init__(self) -> None:
        self.slots = 1
        self.threads = local_cores()

    def submit(self, task: RunTask) -> Future:
        future: Future = Future()
        future.set_result(run_one(task))
        return future

    def close(self) -> None:
        pass


class ProcessBackend:
    """N spawned worker processes (spawn: no forked torch state, same as a fresh run)."""

    def __init__(self, workers: int) -> None:
        self.slots = workers
        self.threads = threads_per_run(local_cores(), workers)
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.slots, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, task: RunTask) -> Future:
        task = RunTask(task.run_id, task.run_dir, task.config_json, task.threads, os.getpid())
        try:
            return self._pool.submit(run_one, task)
        except RuntimeError:  # a worker died (killed, out of memory): start a fresh pool
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            return self._pool.submit(run_one, task)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class RayBackend:
    """Runs as Ray tasks on the cluster that `ray.init()` finds (RAY_ADDRESS), or a local one.

    Run folders are written by the Ray workers, so the study folder must be on a file system
    every node sees under the same path.
    """

    def __init__(self, workers: int) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--backend ray needs Ray: pip install 'dpscope[ray]'") from None
        self._ray = ray
        if not ray.is_initialized():
            ray.init(log_to_driver=False)
        node_cpus = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
        self.slots = workers
        self.threads = max(1, min(min(node_cpus, default=1), threads_per_run(sum(node_cpus), workers)))
        self._remote = ray.remote(num_cpus=self.threads, max_retries=0)(run_one)

    def submit(self, task: RunTask) -> Future:
        return self._remote.remote(task).future()

    def close(self) -> None:
        self._ray.shutdown()


def open_backend(name: BackendName, workers: int) -> Backend:
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1 (got {workers})")
    if name == "ray":
        return RayBackend(workers)
    if name == "local":
        return InProcessBackend() if workers == 1 else ProcessBackend(workers)
    raise ConfigError(f"unknown backend {name!r}; choose local or ray")
