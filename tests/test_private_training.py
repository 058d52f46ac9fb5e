"""Private runs through the one loop: honest epsilon, ledger, exact resume, budget refusals."""

import json

import pytest

from dpscope.config import make_run_config
from dpscope.errors import ConfigError, PrivacyError
from dpscope.io import read_jsonl
from dpscope.privacy import PrivacyLedger, epsilon_spent
from dpscope.train import train
from loop_helpers import assert_train_refuses, whole_and_resumed

PRIVATE = dict(dataset="digits", model="mlp", epochs=3, batch_size=128, lr=0.5, momentum=0.0,
               threads=1, epsilon=3.0, max_grad_norm=1.0)


def test_reported_epsilon_is_the_accountants_for_the_steps_taken(tmp_path):
    summary = train(make_run_config(**PRIVATE), run_dir=tmp_path / "run")
    ledger = json.loads((tmp_path / "run" / "privacy_ledger.json").read_text())
    steps = PrivacyLedger.from_dict(ledger["ledger"]).steps
    assert steps == summary["privacy_steps"] == summary["steps"]
    direct = epsilon_spent(summary["noise_multiplier"], summary["sample_rate"], steps,
                           summary["delta"], accountant="pld")
    assert summary["epsilon"] == pytest.approx(direct, rel=1e-9)
    assert 0.99 * 3.0 <= summary["epsilon"] <= 3.0
    assert summary["sample_rate"] == pytest.approx(128 / 1258)
    epsilons = [row["epsilon"] for row in read_jsonl(tmp_path / "run" / "metrics.jsonl")]
    assert epsilons == sorted(epsilons) and epsilons[-1] == pytest.approx(summary["epsilon"])
    assert "Poisson" in summary["privacy_statement"] or "poisson" in summary["privacy_statement"]


def test_private_resume_reproduces_uninterrupted_run(tmp_path):
    whole, resumed = whole_and_resumed(PRIVATE, tmp_path)
    for key in ("epsilon", "test_accuracy", "test_loss", "privacy_steps", "per_class_accuracy"):
        assert resumed[key] == whole[key], key


@pytest.mark.parametrize("option", [dict(clip_per_layer=True), dict(auto_clip=True),
                                    dict(physical_batch_size=16, clipping="ghost")])
def test_clipping_variants_train_and_account(tmp_path, option):
    summary = train(make_run_config(**{**PRIVATE, "epochs": 1, **option}), run_dir=tmp_path / "r")
    assert summary["epsilon"] <= 3.0 and summary["test_accuracy"] > 0.1


def test_auto_clip_stability_reaches_the_plan_the_ledger_and_the_summary(tmp_path):
    config = make_run_config(**{**PRIVATE, "epochs": 1, "auto_clip": True, "auto_clip_stability": 0.5})
    summary = train(config, run_dir=tmp_path / "r")
    ledger = json.loads((tmp_path / "r" / "privacy_ledger.json").read_text())
    assert ledger["plan"]["clip_kind"] == "automatic" and ledger["plan"]["auto_clip_stability"] == 0.5
    assert summary["auto_clip_stability"] == 0.5 and "(||g|| + 0.5)" in summary["privacy_statement"]


def test_auto_clip_stability_without_auto_clip_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="add auto_clip"):
        make_run_config(**{**PRIVATE, "auto_clip_stability": 0.5})
    assert_train_refuses(tmp_path, ["--epsilon", "3", "--auto-clip-stability", "0.5"], "add auto_clip")
    assert_train_refuses(tmp_path, ["--epsilon", "3", "--auto-clip", "--auto-clip-stability", "0"],
                         "auto_clip_stability")


def test_noise_multiplier_instead_of_epsilon(tmp_path):
    config = {k: v for k, v in PRIVATE.items() if k != "epsilon"}
    summary = train(make_run_config(**config, noise_multiplier=1.0), run_dir=tmp_path / "r")
    direct = epsilon_spent(1.0, summary["sample_rate"], summary["steps"], summary["delta"])
    assert summary["epsilon"] == pytest.approx(direct, rel=1e-9)


@pytest.mark.parametrize("change, message", [
    (dict(delta=0.01), "delta"),
    (dict(batch_size=5000), "batch"),
])
def test_impossible_budget_is_refused_before_anything_is_written(tmp_path, change, message):
    with pytest.raises(PrivacyError, match=message):
        train(make_run_config(**{**PRIVATE, **change}), run_dir=tmp_path / "r")
    assert not (tmp_path / "r" / "checkpoint.pt").exists()
