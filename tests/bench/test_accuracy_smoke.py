"""The accuracy benchmark end to end on digits (1 epoch): record shape, table, reuse of runs."""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import asdict, replace

import pytest

from dpscope.device import resolve_device
from dpscope.errors import ConfigError
from dpscope.optim.schedule import LRSchedule

from dpscope.bench.accuracy import (
    LOAD_FILE,
    PRIVATE_RECIPES,
    _device_label,
    Recipe,
    private_recipe,
    aggregate,
    check_targets,
    format_table,
    mean_spread,
    paired_time_ratio,
    plan_grid,
    run_accuracy_benchmark,
    run_grid,
)

HAVE_OPACUS = importlib.util.find_spec("opacus") is not None

TINY = Recipe(batch_size=128, lr=1.0, momentum=0.0, epochs=1, max_grad_norm=1.0)


def test_mean_spread_is_mean_and_sample_std() -> None:
    stats = mean_spread([0.8, 0.9, None, 1.0])
    assert stats["n"] == 3
    assert stats["mean"] == pytest.approx(0.9)
    assert stats["std"] == pytest.approx(0.1)  # sample std (n - 1)
    assert (stats["min"], stats["max"]) == (0.8, 1.0)
    assert mean_spread([0.5])["std"] == 0.0
    assert mean_spread([None])["mean"] is None


def test_grid_puts_each_dpscope_run_next_to_its_opacus_twin() -> None:
    specs = plan_grid(["digits"], ["cnn"], [1.0, 8.0], [0, 1], ["nonprivate", "dpscope", "opacus"],
                      private_changes=asdict(TINY))
    assert len(specs) == 2 * (1 + 2 * 2)
    variants = [s.variant for s in specs]
    for i, variant in enumerate(variants):
        if variant == "dpscope":
            twin = specs[i + 1]
            assert twin.variant == "opacus"
            assert (twin.epsilon, twin.seed, twin.recipe) == (specs[i].epsilon, specs[i].seed, TINY)
    assert len({s.name for s in specs}) == len(specs)


def test_untuned_epsilon_borrows_the_closest_tuned_recipe_and_overrides_apply() -> None:
    tuned = {eps for name, eps in PRIVATE_RECIPES if name == "pneumoniamnist"}
    assert {1.0, 8.0} <= tuned
    assert private_recipe("pneumoniamnist", 10.0) == PRIVATE_RECIPES[("pneumoniamnist", 8.0)]
    assert private_recipe("pneumoniamnist", 0.5) == PRIVATE_RECIPES[("pneumoniamnist", 1.0)]
    assert private_recipe("pneumoniamnist", 8.0, lr=0.1, epochs=None).lr == 0.1
    assert private_recipe("somefile", 8.0, **asdict(TINY)) == TINY
    with pytest.raises(ConfigError, match="no tuned recipe"):
        private_recipe("somefile", 8.0, lr=0.1)


def test_targets_compare_means_against_the_issue_thresholds() -> None:
    def group(variant, eps, acc, seconds, trained_in="grid-1", statistics=None):
        statistics = statistics or ("train" if eps is None else "fixed")
        return {"dataset": "pneumoniamnist", "model": "cnn", "variant": variant, "target_epsilon": eps,
                "input_statistics": statistics,
                "test_accuracy": {"mean": acc}, "test_auc": {"mean": 0.96},
                "seconds_by_seed": dict(enumerate(seconds)),
                "trained_in_by_seed": {seed: trained_in for seed in range(len(seconds))},
                "sample_rate": 1 / 11, "steps": 220}

    # per-seed ratios 0.4, 0.4, 0.9: median 0.4 (the ratio of means, 0.58, would mix the loads)
    checks = check_targets([group("nonprivate", None, 0.90, [10]), group("dpscope", 1.0, 0.84, [20]),
                            group("dpscope", 8.0, 0.88, [40, 40, 900]),
                            group("opacus", 8.0, 0.88, [100, 100, 1000])])
    met = {c["target"]: c["met"] for c in checks}
    assert met["cnn eps 8 test accuracy >= 0.87"] and met["cnn eps 8 test AUC >= 0.95"]
    assert not met["cnn eps 1 within 5 points of non-private accuracy (gap)"]  # gap 0.06
    assert met["cnn eps 8 wall time <= 0.5 x Opacus (median per-seed ratio)"]
    assert met["cnn eps 8 same sampler as Opacus (q, steps)"]
    # a private group normalised by its training statistics (read back from before) stands apart
    old = check_targets([group("nonprivate", None, 0.90, [10]), group("dpscope", 1.0, 0.87, [20]),
                         group("dpscope", 1.0, 0.84, [20], statistics="train")])
    assert {c["target"]: c["met"] for c in old} == {
        "cnn eps 1 within 5 points of non-private accuracy (gap)": True,
        "cnn (training statistics) eps 1 within 5 points of non-private accuracy (gap)": False}


def test_time_ratio_pairs_only_twins_trained_side_by_side() -> None:
    ours = {"seconds_by_seed": {"0": 40, "1": 50, "2": 60},
            "trained_in_by_seed": {"0": "copied", "1": "grid-2", "2": None}}
    theirs = {"seconds_by_seed": {"0": 400, "1": 100, "2": 600},
              "trained_in_by_seed": {"0": "grid-2", "1": "grid-2", "2": None}}
    assert paired_time_ratio(ours, theirs) == 0.5  # seed 1 only: seed 0 ran apart, seed 2 unknown
    ours["trained_in_by_seed"]["1"] = "grid-1"
    assert paired_time_ratio(ours, theirs) is None
    checks = check_targets([{**theirs, "dataset": "pneumoniamnist", "model": "cnn", "variant": v,
                             "target_epsilon": 8.0, "input_statistics": "fixed", "test_accuracy": {"mean": 0.9},
                             "test_auc": {"mean": 0.96}, "sample_rate": 0.1, "steps": 10,
                             **(ours if v == "dpscope" else {})} for v in ("dpscope", "opacus")])
    wall = next(c for c in checks if "wall time" in c["target"])
    assert wall["value"] is None and not wall["met"]
    assert "no twins trained side by side" in wall["target"]


@pytest.mark.slow
def test_digits_one_epoch_writes_record_and_reuses_finished_runs(tmp_path) -> None:
    specs = plan_grid(["digits"], ["cnn"], [8.0], [0], ["nonprivate", "dpscope", "opacus"],
                      private_changes=asdict(TINY), nonprivate_changes=asdict(TINY))
    lines: list[str] = []
    json_path = tmp_path / "accuracy.json"
    record = run_accuracy_benchmark(specs, tmp_path / "out", json_path=json_path, echo=lines.append)

    saved = json.loads(json_path.read_text())
    assert saved["groups"] == json.loads(json.dumps(record["groups"]))
    env = saved["environment"]
    assert {"machine", "threads_per_run", "torch", "opacus", "code_version"} <= set(env)
    variants = ["nonprivate", "dpscope"] + (["opacus"] if HAVE_OPACUS else [])
    assert [r["variant"] for r in saved["rows"]] == variants
    if not HAVE_OPACUS:
        assert any("opacus is not installed" in line for line in lines)
    for row in saved["rows"]:
        assert 0.0 <= row["test_accuracy"] <= 1.0 and row["test_auc"] is None  # 10 classes
        assert 0.0 <= row["val_accuracy"] <= 1.0 and row["seconds"] > 0
        assert 0.0 <= row["val_balanced_accuracy"] <= 1.0  # Opacus's twin reports it too
        assert 0.0 <= row["test_balanced_accuracy"] <= 1.0
    where = resolve_device("auto").type
    assert all(row["device"].startswith(where) for row in saved["rows"])
    assert saved["groups"][0]["devices"] == [saved["rows"][0]["device"]]
    private = [r for r in saved["rows"] if r["variant"] != "nonprivate"]
    for row in private:
        assert row["epsilon"] == pytest.approx(8.0, rel=0.02) and row["delta"] == 1e-5
        assert row["noise_multiplier"] > 0 and row["steps"] == round(1 / row["sample_rate"])
    assert {r["accountant"] for r in private} == ({"pld", "prv"} if HAVE_OPACUS else {"pld"})
    table = next(line for line in lines if line.startswith("dataset"))
    assert table.count("\n") == len(variants) and "±" in table and "device" in table
    assert ("opacus" in table) == HAVE_OPACUS

    again = run_accuracy_benchmark(specs, tmp_path / "out", echo=lambda _: None)
    for first, second in zip(record["rows"], again["rows"]):  # read back, not retrained
        assert not first["reused"] and second["reused"]
        assert first["load_before"] == second["load_before"] and len(first["load_after"]) == 3
        assert math.isclose(first["seconds"], second["seconds"])
        assert first["test_accuracy"] == second["test_accuracy"]
    assert len(aggregate(again["rows"])) == len(variants) and format_table(aggregate(again["rows"]))


@pytest.mark.slow
def test_ema_recipe_reaches_dpscope_and_opacus_runs_and_the_table(tmp_path) -> None:
    recipe = Recipe(**{**asdict(TINY), "ema_decay": 0.9})
    specs = plan_grid(["digits"], ["cnn"], [8.0], [0], ["dpscope", "opacus"],
                      private_changes=asdict(recipe))
    assert all(s.name.endswith("-ema0.9-seed0") for s in specs)
    lines: list[str] = []
    record = run_accuracy_benchmark(specs, tmp_path / "out", echo=lines.append)
    summary = json.loads((tmp_path / "out" / "runs" / specs[0].name / "summary.json").read_text())
    assert summary["evaluated_weights"] == "ema (decay 0.9)"
    assert summary["input_normalization"]["statistics"] == "fixed"
    if HAVE_OPACUS:  # the twin trains on the same normalised images
        twin = json.loads((tmp_path / "out" / "runs" / specs[1].name / "summary.json").read_text())
        assert twin["input_normalization"] == summary["input_normalization"]
    assert [r["variant"] for r in record["rows"]] == ["dpscope"] + (["opacus"] if HAVE_OPACUS else [])
    assert all(r["recipe"]["ema_decay"] == 0.9 for r in record["rows"])
    assert "ema0.9" in next(line for line in lines if line.startswith("dataset"))


@pytest.mark.slow
def test_lr_schedule_reaches_dpscope_and_opacus_runs_and_the_table(tmp_path) -> None:
    recipe = Recipe(**{**asdict(TINY), "epochs": 2, "lr_schedule": "cosine", "warmup_epochs": 1.0})
    specs = plan_grid(["digits"], ["cnn"], [8.0], [0], ["dpscope", "opacus"],
                      private_changes=asdict(recipe))
    assert all(s.name.endswith("-wu1-cosine-seed0") for s in specs)
    lines: list[str] = []
    record = run_accuracy_benchmark(specs, tmp_path / "out", echo=lines.append)
    runs = tmp_path / "out" / "runs"
    for spec in specs[:1 + HAVE_OPACUS]:  # both twins step with the same rates, epoch by epoch
        assert (runs / spec.name / "summary.json").is_file()
    dpscope_lrs = [json.loads(line)["lr"] for line in
                   (runs / specs[0].name / "metrics.jsonl").read_text().splitlines()]
    steps = record["rows"][0]["steps"] // 2
    expected = LRSchedule("cosine", warmup_steps=steps, total_steps=2 * steps)
    assert dpscope_lrs == pytest.approx([TINY.lr * expected((e + 1) * steps - 1) for e in range(2)])
    if HAVE_OPACUS:
        opacus_lrs = [json.loads(line)["lr"] for line in
                      (runs / specs[1].name / "metrics.jsonl").read_text().splitlines()]
        assert opacus_lrs == pytest.approx(dpscope_lrs)
    assert "wu1-cosine" in next(line for line in lines if line.startswith("dataset"))


def test_a_models_own_recipe_replaces_the_datasets_and_ema_zero_turns_it_off() -> None:
    from dpscope.bench.accuracy import MODEL_PRIVATE_RECIPES

    own = MODEL_PRIVATE_RECIPES[("pneumoniamnist", "resnet20", 8.0)]
    by_model = {s.model: s for s in plan_grid(["pneumoniamnist"], ["cnn", "resnet20"], [8.0], [0],
                                              ["dpscope"])}
    assert by_model["resnet20"].recipe == own
    assert by_model["cnn"].recipe == PRIVATE_RECIPES[("pneumoniamnist", 8.0)]
    assert private_recipe("pneumoniamnist", 2.5, "resnet20") == MODEL_PRIVATE_RECIPES[
        ("pneumoniamnist", "resnet20", 3.0)]
    off = plan_grid(["pneumoniamnist"], ["resnet20"], [8.0], [0], ["dpscope"],
                    private_changes={"ema_decay": 0.0})[0]
    assert off.recipe.ema_decay == 0.0 and "-ema" not in off.name


def test_the_centred_resnet_has_its_own_eps1_recipe_in_the_default_grid() -> None:
    from dpscope.bench.accuracy import DEFAULT_MODELS, MODEL_PRIVATE_RECIPES

    assert "resnet20_centred" in DEFAULT_MODELS
    centred = private_recipe("pneumoniamnist", 1.0, "resnet20_centred")
    plain = MODEL_PRIVATE_RECIPES[("pneumoniamnist", "resnet20", 1.0)]
    assert centred.class_clip != plain.class_clip
    assert replace(centred, class_clip=plain.class_clip) == plain  # the one field chosen for it
    assert private_recipe("pneumoniamnist", 8.0, "resnet20_centred") == centred  # untuned: borrowed


@pytest.mark.slow
def test_parallel_grid_runs_each_spec_in_its_own_process_and_keeps_the_order(tmp_path) -> None:
    specs = plan_grid(["digits"], ["mlp"], [8.0], [0, 1, 2], ["dpscope"], private_changes=asdict(TINY))
    rows = run_grid(specs, tmp_path, jobs=2, echo=lambda _: None)
    assert [r["run"] for r in rows] == [s.name for s in specs]
    serial = run_grid(specs[:1], tmp_path / "serial", echo=lambda _: None)
    assert serial[0]["test_accuracy"] == rows[0]["test_accuracy"]  # same run, any process
    pids = [json.loads((tmp_path / "runs" / s.name / LOAD_FILE).read_text())["pid"] for s in specs]
    assert len(set(pids)) == len(specs)


def test_frozen_layers_reach_dpscope_and_opacus_runs_and_the_table(tmp_path) -> None:
    recipe = Recipe(**{**asdict(TINY), "freeze": "layers.1"})
    specs = plan_grid(["digits"], ["mlp"], [8.0], [0], ["dpscope", "opacus"],
                      private_changes=asdict(recipe))
    assert specs[0].name != plan_grid(["digits"], ["mlp"], [8.0], [0], ["dpscope"],
                                      private_changes=asdict(TINY))[0].name
    lines: list[str] = []
    record = run_accuracy_benchmark(specs, tmp_path / "out", echo=lines.append)
    config = json.loads((tmp_path / "out" / "runs" / specs[0].name / "config.json").read_text())
    assert config["config"]["freeze"] == "layers.1"
    assert [r["variant"] for r in record["rows"]] == ["dpscope"] + (["opacus"] if HAVE_OPACUS else [])
    assert "freeze layers.1" in next(line for line in lines if line.startswith("dataset"))


def test_class_clip_reaches_dpscope_and_opacus_runs_and_the_table(tmp_path) -> None:
    recipe = Recipe(**{**asdict(TINY), "class_clip": (1.0,) + (0.5,) * 9})
    specs = plan_grid(["digits"], ["mlp"], [8.0], [0], ["dpscope", "opacus"], private_changes=asdict(recipe))
    assert "-cc1_0.5" in specs[0].name
    lines: list[str] = []
    record = run_accuracy_benchmark(specs, tmp_path / "out", echo=lines.append)
    config = json.loads((tmp_path / "out" / "runs" / specs[0].name / "config.json").read_text())
    assert config["config"]["class_clip"] == [1.0] + [0.5] * 9
    assert [r["variant"] for r in record["rows"]] == ["dpscope"] + (["opacus"] if HAVE_OPACUS else [])
    assert "class-clip 1,0.5" in next(line for line in lines if line.startswith("dataset"))


def test_a_group_says_which_device_its_runs_ran_on() -> None:
    h100 = "cuda:0 (NVIDIA H100 80GB HBM3)"
    assert _device_label([h100]) == "cuda:0"
    assert _device_label(["cpu (x86_64)"]) == "cpu"
    assert _device_label(["cpu (x86_64)", h100]) == "mixed"
    assert _device_label(["unrecorded", h100]) == "mixed"  # a run read back from before devices
    assert _device_label(["unrecorded"]) == "-"


def test_auto_clip_reaches_dpscope_and_opacus_runs_and_the_table(tmp_path) -> None:
    recipe = Recipe(**{**asdict(TINY), "auto_clip": True, "auto_clip_stability": 0.5})
    specs = plan_grid(["digits"], ["mlp"], [8.0], [0], ["dpscope", "opacus"], private_changes=asdict(recipe))
    assert "-autoclip" in specs[0].name and "-autoclip" not in plan_grid(
        ["digits"], ["mlp"], [8.0], [0], ["dpscope"], private_changes=asdict(TINY))[0].name
    lines: list[str] = []
    record = run_accuracy_benchmark(specs, tmp_path / "out", echo=lines.append)
    config = json.loads((tmp_path / "out" / "runs" / specs[0].name / "config.json").read_text())
    assert config["config"]["auto_clip"] is True
    ledger = json.loads((tmp_path / "out" / "runs" / specs[0].name / "privacy_ledger.json").read_text())
    assert ledger["plan"]["clip_kind"] == "automatic" and ledger["plan"]["auto_clip_stability"] == 0.5
    assert [r["variant"] for r in record["rows"]] == ["dpscope"] + (["opacus"] if HAVE_OPACUS else [])
    assert "auto-clip 0.5" in next(line for line in lines if line.startswith("dataset"))
