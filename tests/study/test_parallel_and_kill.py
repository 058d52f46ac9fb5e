"""Parallel runs match serial ones, and a study killed at any moment loses and corrupts nothing."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from contextlib import closing
from pathlib import Path

import pytest
from study_test_helpers import write_spec

from dpscope.io import read_jsonl
from dpscope.study import ResultsStore, load_spec, run_dir, run_study
from dpscope.study.store import STORE_FILE

EPOCHS = 5
SPEC = f"""\
[base]
dataset = "digits"
model = "mlp"
epochs = {EPOCHS}
threads = 1
batch_size = 128
[grid]
epsilon = ["none", 4.0]
seed = [0, 1]
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory) -> Path:
    return write_spec(tmp_path_factory.mktemp("spec"), "sweep", SPEC)


@pytest.fixture(scope="module")
def serial(spec_path, tmp_path_factory) -> dict[str, float]:
    """test_accuracy of every run, trained one after the other in this process."""
    result = run_study(load_spec(spec_path), tmp_path_factory.mktemp("serial") / "study")
    assert result.ok
    return accuracies(result.study_dir)


def accuracies(study_dir: Path) -> dict[str, float]:
    with ResultsStore(study_dir / STORE_FILE, create=False) as store:
        return {r.id: r.test_accuracy for r in store.runs()}


def test_two_workers_give_the_same_results_as_serial(spec_path, serial, tmp_path):
    result = run_study(load_spec(spec_path), tmp_path / "study", workers=2)
    assert result.ok and len(result.finished) == 4
    assert accuracies(result.study_dir) == serial


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _mid_run(study_dir: Path) -> bool:
    """The store holds a finished run and another run has a checkpoint, at least two epochs
    from its end (so it cannot finish between this check and the kill)."""
    folders = [p for p in (study_dir / "runs").glob("*") if p.is_dir()] if study_dir.exists() else []
    started = [p for p in folders if (p / "checkpoint.pt").exists()
               and not (p / "summary.json").exists()
               and len(read_jsonl(p / "metrics.jsonl")) <= EPOCHS - 2]
    if not started:
        return False
    with closing(sqlite3.connect(f"file:{study_dir / STORE_FILE}?mode=ro", uri=True, timeout=5)) as db:
        return db.execute("SELECT count(*) FROM runs WHERE status = 'finished'").fetchone()[0] > 0


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_sigkill_mid_study_then_rerun_finishes_everything_consistently(spec_path, serial, tmp_path):
    study_dir = tmp_path / "study"
    marker = f"DPSCOPE_KILL_TEST={uuid.uuid4().hex}"
    env = dict(os.environ, PYTHONUNBUFFERED="1", DPSCOPE_KILL_TEST=marker.split("=")[1])
    process = subprocess.Popen(
        [sys.executable, "-m", "dpscope", "study", str(spec_path), "--out", str(study_dir),
         "--workers", "2", "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not _mid_run(study_dir):
        assert process.poll() is None, f"study ended before it could be killed: {process.communicate()}"
        assert time.monotonic() < deadline, "study never reached the middle of a run"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()

    # its worker processes stop on their own once the study process is gone
    deadline = time.monotonic() + 10
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_with(marker) == []

    with ResultsStore(study_dir / STORE_FILE, create=False) as store:
        assert store.integrity_ok()
        before = {r.id: r.status for r in store.runs()}
    assert "finished" in before.values() and "running" in before.values()

    result = run_study(load_spec(spec_path), study_dir)
    assert result.ok
    with ResultsStore(study_dir / STORE_FILE, create=False) as store:
        assert store.integrity_ok()
        records = store.runs()
        assert {r.status for r in records} == {"finished"}
        for record in records:
            folder = run_dir(study_dir, record.id)
            summary = json.loads((folder / "summary.json").read_text())
            assert record.test_accuracy == summary["test_accuracy"]
            epochs = [e["epoch"] for e in read_jsonl(folder / "metrics.jsonl")]
            assert epochs == list(range(EPOCHS))
            assert [e["epoch"] for e in store.epoch_metrics(record.id)] == epochs
        resumed = [r for r in records if r.resumed_from_epoch]
        assert resumed, "the run killed in the middle should have resumed from its checkpoint"
    assert accuracies(study_dir) == serial  # resuming reproduces the uninterrupted runs exactly
