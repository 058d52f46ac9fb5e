"""Learning-rate schedules: the rates are the ones defined, every step of a run uses them, resume
continues them, and the privacy accounting does not change."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from dpscope.callbacks import Callback
from dpscope.cli import app
from dpscope.config import make_run_config
from dpscope.errors import ConfigError
from dpscope.optim.schedule import LRSchedule
from dpscope.train import train
from loop_helpers import assert_train_refuses, whole_and_resumed

PRIVATE = dict(dataset="digits", model="mlp", epochs=3, batch_size=256, lr=0.5, momentum=0.0,
               threads=1, epsilon=2.0, max_grad_norm=1.0)


def test_warm_up_rises_linearly_to_the_full_rate():
    schedule = LRSchedule("constant", warmup_steps=4, total_steps=10)
    assert [schedule(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_decay_runs_from_one_towards_zero_after_the_warm_up(name):
    schedule = LRSchedule(name, warmup_steps=2, total_steps=12)  # 10 decay steps
    decay = [schedule(s) for s in range(2, 12)]
    progress = [k / 10 for k in range(10)]
    expected = ([0.5 * (1 + math.cos(math.pi * p)) for p in progress] if name == "cosine"
                else [1 - p for p in progress])
    assert decay == pytest.approx(expected, abs=1e-15)
    assert decay[0] == 1.0 and 0 < decay[-1] < 0.1
    assert all(a > b for a, b in zip(decay, decay[1:]))


def test_a_constant_rate_without_warm_up_needs_no_scheduler():
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    assert LRSchedule("constant", warmup_steps=0, total_steps=10).scheduler(optimizer) is None
    assert LRSchedule("linear", warmup_steps=0, total_steps=10).scheduler(optimizer) is not None


@pytest.mark.parametrize("bad", [dict(name="step"), dict(warmup_steps=-1), dict(total_steps=0)])
def test_impossible_schedules_are_refused(bad):
    with pytest.raises(ValueError):
        LRSchedule(**{**dict(name="cosine", warmup_steps=1, total_steps=5), **bad})


class RecordRates(Callback):
    """The rate each optimizer step used, read from the optimizer before the step."""

    name = "rates"

    def __init__(self):
        self.rates: list[float] = []
        self._next: float | None = None

    def on_train_start(self, state):
        self._next = state.optimizer.param_groups[0]["lr"]

    def on_step_end(self, state, report):
        self.rates.append(self._next)  # the rate in place when this step ran
        self._next = state.optimizer.param_groups[0]["lr"]


@pytest.mark.parametrize("name", ["cosine", "linear", "constant"])
def test_private_run_steps_with_the_scheduled_rates(tmp_path, name):
    record = RecordRates()
    config = make_run_config(**PRIVATE, lr_schedule=name, warmup_epochs=1)
    train(config, run_dir=tmp_path / "r", callbacks=[record])
    steps_per_epoch = round(1258 / config.batch_size)  # Poisson: round(1/q); digits: 1258 training images
    total, warmup = 3 * steps_per_epoch, steps_per_epoch
    assert len(record.rates) == total
    for step, rate in enumerate(record.rates):
        if step < warmup:
            expected = (step + 1) / warmup
        elif name == "constant":
            expected = 1.0
        else:
            progress = (step - warmup) / (total - warmup)
            expected = 0.5 * (1 + math.cos(math.pi * progress)) if name == "cosine" else 1 - progress
        assert rate == pytest.approx(0.5 * expected, rel=1e-12), step
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in records] == [record.rates[(e + 1) * steps_per_epoch - 1] for e in range(3)]


@pytest.mark.slow
def test_schedule_leaves_the_accounting_unchanged(tmp_path):
    plain = train(make_run_config(**PRIVATE), run_dir=tmp_path / "plain")
    scheduled = train(make_run_config(**PRIVATE, lr_schedule="cosine", warmup_epochs=0.5),
                      run_dir=tmp_path / "cos")
    for key in ("epsilon", "noise_multiplier", "sample_rate", "privacy_steps", "max_grad_norm"):
        assert scheduled[key] == plain[key], key
    assert scheduled["test_loss"] != plain["test_loss"]  # the schedule did change the training


@pytest.mark.slow
def test_resume_continues_the_schedule(tmp_path):
    whole, resumed = whole_and_resumed(dict(PRIVATE, lr_schedule="cosine", warmup_epochs=1), tmp_path)
    for key in ("epsilon", "test_accuracy", "test_loss"):
        assert resumed[key] == whole[key], key
    rates = [[json.loads(line)["lr"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
             for run in ("whole", "cut")]
    assert rates[0] == rates[1]


def test_warm_up_longer_than_the_run_is_refused_at_start(tmp_path):
    config = make_run_config(**PRIVATE, warmup_epochs=3)  # each option alone is valid (studies)
    with pytest.raises(ConfigError, match="warmup_epochs"):
        train(config, run_dir=tmp_path / "r")
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


@pytest.mark.parametrize("options, field", [(["--warmup-epochs", "2"], "warmup_epochs"),
                                            (["--warmup-epochs", "-1"], "warmup_epochs"),
                                            (["--lr-schedule", "step"], "lr_schedule")])
def test_cli_bad_schedule_gives_one_line_and_exit_2(tmp_path, options, field):
    assert_train_refuses(tmp_path, options, field, epochs=2)


def test_cli_prints_the_schedule(tmp_path):
    result = CliRunner().invoke(app, ["train", "--model", "mlp", "--epochs", "2", "--threads", "1",
                                      "--lr-schedule", "cosine", "--warmup-epochs", "0.5",
                                      "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "linear warm-up over" in result.output and "cosine decay" in result.output
