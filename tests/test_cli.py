"""The `dpscope` command run as a user would: a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def dpscope(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="120")
    return subprocess.run([sys.executable, "-m", "dpscope", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_train_with_defaults_reaches_good_accuracy_on_digits(tmp_path):
    result = dpscope("train", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["dataset"] == "digits"
    assert summary["test_accuracy"] >= 0.95
    assert "epoch" in result.stdout and "test accuracy" in result.stdout


def test_quiet_prints_nothing(tmp_path):
    result = dpscope("train", "--model", "mlp", "--epochs", "1", "--quiet",
                     "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "no_such_file.npz"], "no_such_file.npz"),
        (["--model", "no_such_model"], "no_such_model"),
        (["--epochs", "0"], "epochs"),
        (["--resume"], "--out"),
    ],
)
def test_bad_input_gives_one_line_and_exit_code_2(tmp_path, args, message):
    result = dpscope("train", "--out", str(tmp_path / "run"), *args, cwd=tmp_path) if args != [
        "--resume"] else dpscope("train", "--resume", cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_resume_refuses_new_options(tmp_path):
    run = tmp_path / "run"
    assert dpscope("train", "--model", "mlp", "--epochs", "1", "-q", "--out", str(run),
                   cwd=tmp_path).returncode == 0
    result = dpscope("train", "--resume", "--out", str(run), "--lr", "1", cwd=tmp_path)
    assert result.returncode == 2 and "--lr" in result.stderr


def test_bench_clipping_runs_a_tiny_case_and_refuses_unknown_variants(tmp_path):
    out = tmp_path / "bench.json"
    result = dpscope("bench", "clipping", "--case", "mlp:4", "--variant", "nonprivate",
                     "--variant", "auto", "--repeats", "1", "--no-memory", "--threads", "1",
                     "--json", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "auto" in result.stdout and json.loads(out.read_text())
    bad = dpscope("bench", "clipping", "--variant", "bogus", cwd=tmp_path)
    assert bad.returncode == 2 and "bogus" in bad.stderr and "Traceback" not in bad.stderr
