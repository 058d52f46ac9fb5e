"""EMA of the weights: the average is the one defined, the run evaluates it, resume continues
it, and the privacy accounting does not change."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from dpscope.averaging import WeightAverage
from dpscope.callbacks import Callback
from dpscope.cli import app
from dpscope.config import make_run_config
from dpscope.data import load_dataset
from dpscope.dataset_prep import prepare_dataset
from dpscope.metrics import classification_metrics, predict
from dpscope.models import build_model
from dpscope.train import train
from loop_helpers import assert_train_refuses, whole_and_resumed

PRIVATE = dict(dataset="digits", model="mlp", epochs=2, batch_size=256, lr=0.5, momentum=0.0,
               threads=1, epsilon=2.0, max_grad_norm=1.0)
DECAY = 0.8


def test_average_matches_the_recursion_written_out():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.GroupNorm(1, 2)).double()
    average = WeightAverage(model, DECAY)
    iterates = []
    for _ in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        iterates.append({k: v.clone() for k, v in model.state_dict().items()})
        average.update(model)
    # first update copies, then avg <- d avg + (1 - d) w_t
    weights = [DECAY ** 3, (1 - DECAY) * DECAY ** 2, (1 - DECAY) * DECAY, 1 - DECAY]
    for name, value in average.module.state_dict().items():
        expected = sum(w * it[name] for w, it in zip(weights, iterates))
        torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    assert average.updates == 4


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_decay_outside_the_open_unit_interval_is_refused(decay):
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(torch.nn.Linear(2, 2), decay)


class RecordIterates(Callback):
    """Keeps the weights after every optimizer step (an independent record of the iterates)."""

    name = "record"

    def __init__(self):
        self.iterates: list[dict[str, torch.Tensor]] = []

    def on_step_end(self, state, report):
        self.iterates.append({k: v.detach().clone() for k, v in state.model.state_dict().items()})


def test_private_run_reports_the_average_of_its_iterates(tmp_path):
    record = RecordIterates()
    config = make_run_config(**PRIVATE, ema_decay=DECAY)
    summary = train(config, run_dir=tmp_path / "r", callbacks=[record])
    average = dict(record.iterates[0])
    for iterate in record.iterates[1:]:
        average = {k: DECAY * average[k] + (1 - DECAY) * iterate[k] for k in average}
    dataset = prepare_dataset(config, load_dataset("digits", seed=0)).dataset  # the run's input statistics
    model = build_model("mlp", in_channels=dataset.in_channels, image_size=dataset.image_size,
                        num_classes=dataset.num_classes)
    images = dataset.normalize(dataset.test.images)

    def test_metrics(weights):
        model.load_state_dict(weights)
        return classification_metrics(predict(model, images), dataset.test.labels,
                                      dataset.num_classes)

    assert summary["test_loss"] == pytest.approx(test_metrics(average)["loss"], rel=1e-5)
    last = test_metrics(record.iterates[-1])
    assert summary["test_accuracy_last_iterate"] == pytest.approx(last["accuracy"])
    assert summary["test_loss"] != pytest.approx(last["loss"], rel=1e-5)  # not the last iterate
    assert summary["evaluated_weights"] == f"ema (decay {DECAY:g})"


@pytest.mark.slow
def test_averaging_leaves_the_accounting_unchanged(tmp_path):
    plain = train(make_run_config(**PRIVATE), run_dir=tmp_path / "plain")
    averaged = train(make_run_config(**PRIVATE, ema_decay=DECAY), run_dir=tmp_path / "ema")
    for key in ("epsilon", "noise_multiplier", "sample_rate", "privacy_steps", "max_grad_norm",
                "test_accuracy"):
        if key == "test_accuracy":  # the same iterates: the last one is the plain run's model
            assert averaged["test_accuracy_last_iterate"] == plain[key]
        else:
            assert averaged[key] == plain[key], key
    assert plain["evaluated_weights"] == "last iterate"


@pytest.mark.slow
def test_resume_continues_the_average(tmp_path):
    whole, resumed = whole_and_resumed(dict(PRIVATE, ema_decay=DECAY), tmp_path)
    for key in ("epsilon", "test_accuracy", "test_loss", "test_accuracy_last_iterate"):
        assert resumed[key] == whole[key], key


@pytest.mark.parametrize("value", ["0", "1", "1.5"])
def test_cli_bad_ema_decay_gives_one_line_and_exit_2(tmp_path, value):
    assert_train_refuses(tmp_path, ["--ema-decay", value], "ema_decay")


def test_cli_final_line_names_the_evaluated_weights(tmp_path):
    result = CliRunner().invoke(app, ["train", "--model", "mlp", "--epochs", "1", "--threads", "1",
                                      "--ema-decay", "0.9", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "EMA of the iterates, decay 0.9" in result.output
    assert "last iterate" in " ".join(result.output.split())
