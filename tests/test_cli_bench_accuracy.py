"""`dpscope bench accuracy` through typer's runner: the same benchmark as benchmarks/accuracy.py."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dpscope.bench.accuracy import AUGMULT, plan_grid
from dpscope.cli import app


def invoke(*args: str):
    return CliRunner().invoke(app, ["bench", "accuracy", *args])


@pytest.mark.slow
def test_runs_the_grid_and_writes_the_record(tmp_path) -> None:
    out = tmp_path / "acc"
    result = invoke("--dataset", "digits", "--model", "mlp", "--epsilon", "1", "--seed", "0",
                    "--variant", "nonprivate", "--variant", "dpscope", "--variant", "dpscope_augmult",
                    "--epochs", "1",
                    "--batch-size", "256", "--out", str(out))
    assert result.exit_code == 0, result.output
    record = json.loads((out / "accuracy.json").read_text())
    assert [(r["variant"], r["target_epsilon"]) for r in record["rows"]] == [
        ("nonprivate", None), ("dpscope", 1.0), ("dpscope_augmult", 1.0)]
    private, augmented = record["rows"][1:]
    assert augmented["recipe"] == {**private["recipe"], **AUGMULT["digits"]}
    assert augmented["epsilon"] == private["epsilon"]  # multiplicity leaves the accounting alone
    assert private["recipe"]["batch_size"] == 256 and private["recipe"]["epochs"] == 1
    assert private["epsilon"] <= 1.0
    assert "digits" in result.output and "dpscope" in result.output
    assert (out / "runs" / private["run"] / "summary.json").is_file()


def test_bad_option_gives_one_line_and_exit_code_2(tmp_path) -> None:
    for args, message in [(("--variant", "nope"), "nope"), (("--accountant", "xyz"), "xyz"),
                          (("--jobs", "0"), "jobs"), (("--ema-decay", "1"), "ema_decay"),
                          (("--lr-schedule", "step"), "lr_schedule"),
                          (("--warmup-epochs", "-1"), "warmup_epochs"),
                          (("--warmup-epochs", "30"), "warmup_epochs"),
                          (("--freeze", "fc,,conv"), "empty pattern"),
                          (("--class-clip", "1,2"), "(0, 1]"),
                          (("--auto-clip-stability", "0"), "auto_clip_stability"),
                          (("--input-normalization", "imagenet"), "input_normalization")]:
        result = invoke("--dataset", "digits", "--out", str(tmp_path / "o"), *args)
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1


def test_augmult_variants_add_the_datasets_augmentation_to_the_same_recipes() -> None:
    specs = plan_grid(["pneumoniamnist"], ["cnn"], [8.0], [0], ["nonprivate", "nonprivate_augmult", "dpscope",
                                                               "dpscope_augmult"])
    by_variant = {s.variant: s for s in specs}
    for base in ("nonprivate", "dpscope"):
        plain, augmented = by_variant[base].recipe, by_variant[base + "_augmult"].recipe
        assert plain.augment is None and plain.augment_multiplicity == 1
        assert augmented.augment_multiplicity > 1
        assert {**vars(augmented), **dict(augment=None, augment_multiplicity=1)} == vars(plain)
    assert len({s.name for s in specs}) == 4


def test_freeze_override_reaches_the_private_recipes_only() -> None:
    specs = plan_grid(["pneumoniamnist"], ["resnet20"], [1.0], [0], ["nonprivate", "dpscope", "opacus"],
                      private_changes=dict(freeze="stages.2"))
    by_variant = {s.variant: s for s in specs}
    assert by_variant["dpscope"].recipe.freeze == by_variant["opacus"].recipe.freeze == "stages.2"
    assert by_variant["nonprivate"].recipe.freeze is None
    assert "-frz" in by_variant["dpscope"].name and "-frz" not in by_variant["nonprivate"].name


def test_auto_clip_override_reaches_the_private_recipes_only() -> None:
    on = {s.variant: s for s in plan_grid(["pneumoniamnist"], ["cnn"], [8.0], [0], ["nonprivate", "dpscope", "opacus"],
                                          private_changes=dict(auto_clip=True))}
    assert on["dpscope"].recipe.auto_clip and on["opacus"].recipe.auto_clip
    assert not on["nonprivate"].recipe.auto_clip
    off = plan_grid(["pneumoniamnist"], ["resnet20"], [1.0], [0], ["dpscope"], private_changes=dict(auto_clip=False))
    assert not off[0].recipe.auto_clip  # --no-auto-clip turns a tuned recipe's off


def test_auto_clip_flag_parses_both_ways(tmp_path) -> None:
    for flag in ("--auto-clip", "--no-auto-clip"):
        result = invoke("--dataset", "digits", "--variant", "nope", flag, "--out", str(tmp_path / "o"))
        assert result.exit_code == 2 and "nope" in result.output  # parsed, then refused for the variant


def test_auto_clip_stability_override_reaches_the_private_recipes_and_their_names() -> None:
    specs = {s.variant: s for s in plan_grid(["pneumoniamnist"], ["resnet20"], [1.0], [0],
                                             ["nonprivate", "dpscope", "opacus"],
                                             private_changes=dict(auto_clip=True, auto_clip_stability=0.3))}
    assert specs["dpscope"].recipe.auto_clip_stability == specs["opacus"].recipe.auto_clip_stability == 0.3
    assert "-autoclip0.3-" in specs["dpscope"].name
    default = plan_grid(["pneumoniamnist"], ["resnet20"], [1.0], [0], ["dpscope"], private_changes=dict(auto_clip=True))
    assert "-autoclip-" in default[0].name  # runs from before the option keep their names


def test_private_runs_and_twins_use_fixed_input_statistics_and_say_so_in_their_names() -> None:
    specs = {s.variant: s for s in plan_grid(["pneumoniamnist"], ["cnn"], [8.0], [0], ["nonprivate", "dpscope", "opacus"])}
    assert specs["dpscope"].input_statistics == specs["opacus"].input_statistics == "fixed"
    assert "-C1-fixedin-" in specs["dpscope"].name and "-C1-fixedin-" in specs["opacus"].name
    assert specs["nonprivate"].input_statistics == "train" and "fixedin" not in specs["nonprivate"].name
    # the runs benchmarked before fixed statistics keep their names, read back as they were
    old = plan_grid(["pneumoniamnist"], ["cnn"], [8.0], [0], ["dpscope"], private_changes=dict(input_normalization="train"))
    assert old[0].input_statistics == "train" and "fixedin" not in old[0].name
