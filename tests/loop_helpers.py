"""Shared helpers for tests of the training loop."""

import pytest

from dpscope.callbacks import Callback
from dpscope.config import make_run_config
from dpscope.train import resume, train


class CrashAtEpoch(Callback):
    """Simulates a killed process: raises in the middle of the given epoch."""

    name = "crash"

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_step_end(self, state, report) -> None:
        if report.epoch == self.epoch and report.step % 5 == 0:
            raise KeyboardInterrupt


def whole_and_resumed(options: dict, tmp_path) -> tuple[dict, dict]:
    """Summaries of one uninterrupted run and of the same run killed in epoch 1 and resumed."""
    whole = train(make_run_config(**options), run_dir=tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        train(make_run_config(**options), run_dir=tmp_path / "cut", callbacks=[CrashAtEpoch(1)])
    return whole, resume(tmp_path / "cut")


def assert_train_refuses(tmp_path, options: list[str], message: str, *, epochs: int = 1) -> None:
    """`dpscope train` (mlp on digits, quiet) with `options` exits with code 2 and one line that
    holds `message`, no traceback, and leaves no run folder behind."""
    from typer.testing import CliRunner

    from dpscope.cli import app

    out = tmp_path / "refused"
    result = CliRunner().invoke(app, ["train", "--model", "mlp", "--epochs", str(epochs), "-q", *options,
                                      "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()
