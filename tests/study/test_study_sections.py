"""The fairness and perturbation report sections, from run summaries written here by hand."""

from __future__ import annotations

import re

import pytest

from dpscope.data.perturb import KIND_LDP, KIND_NONE
from dpscope.study.report import RunView
from dpscope.study.report.data import StudyData
from dpscope.study.store import RunRecord
from dpscope.study_sections import _method_label, fairness_section, perturbation_section


def _run(run_id: str, config: dict, summary: dict, accuracy: float = 0.9,
         auc: float | None = None) -> RunView:
    record = RunRecord(
        id=run_id, position=0, config=config, status="finished", attempts=1, created_at="",
        started_at=None, finished_at=None, wall_seconds=None, resumed_from_epoch=None,
        error=None, traceback=None, test_accuracy=accuracy, test_balanced_accuracy=None,
        test_auc=auc, test_loss=None, epsilon=config.get("epsilon"), delta=None, seconds=1.0,
        summary=summary)
    return RunView(record, None, {}, [])  # type: ignore[arg-type]


def _group(count: int, correct: int) -> dict:
    return {"count": count, "positives": 0,
            "accuracy": {"value": correct / count, "ci": [0.0, 1.0]}}


def _imbalance_run(share: float, epsilon: float | None, seed: int, minority_correct: int):
    """Two groups of 50 test images: the minority (class 0) and the rest (class 1, 45 right)."""
    summary = {
        "dataset": "toy",
        "imbalance": {"minority_group": "rare", "majority_share": share,
                      "test_composition": "balanced"},
        "fairness": {
            "groups": {"rare": _group(50, minority_correct), "common": _group(50, 45)},
            "gaps": {"accuracy_difference": {"value": abs(45 - minority_correct) / 50,
                                             "ci": [0.0, 0.5]},
                     "equal_opportunity_difference": {"value": None, "ci": [None, None]}},
        },
    }
    return _run(f"s{share}-e{epsilon}-seed{seed}", {"epsilon": epsilon, "seed": seed}, summary)


def test_fairness_section_draws_minority_vs_rest_with_bootstrap_intervals(tmp_path):
    runs = [_imbalance_run(share, eps, seed, correct - seed)
            for share, correct in ((0.7, 40), (0.99, 20))
            for eps in (1.0, None) for seed in (0, 1)]
    study = StudyData(tmp_path, "s", "", "", runs)
    page = fairness_section(study)
    assert (tmp_path / "figures" / "fairness.png").is_file()
    rows = re.findall(r"<tr><td>toy, minority rare</td>(.*?)</tr>", page)
    assert len(rows) == 4  # 2 shares x 2 privacy levels
    cells = re.findall(r"<td>(.*?)</td>", rows[0])  # share 0.7, epsilon 1
    assert cells[:3] == ["0.7", "ε=1", "2"]
    # minority accuracy: seeds 40/50 and 39/50, mean 0.790; an interval follows the spread
    assert cells[3].startswith("0.790 <span class='pm'>&plusmn; 0.014</span> <span class='ci'>[")
    # majority accuracy 0.9 in both seeds; gap = 0.9 - 0.79
    assert cells[4].startswith("0.900")
    assert cells[5].startswith("0.110")
    low, high = map(float, re.search(r"\[(.*?), (.*?)\]", cells[5]).groups())
    assert low < 0.110 < high
    # the TPR gap is undefined in every run: left out, and the caption says why
    assert "equal-opportunity" not in page and "Left out, undefined in every run" in page


def test_fairness_figure_sets_privacy_levels_side_by_side_with_bands(tmp_path):
    runs = [_imbalance_run(share, eps, 0, 30) for share in (0.7, 0.99) for eps in (1.0, None)]
    drawn = {}

    class Capture(StudyData):
        def figure(self, name, fig, alt):
            drawn[name] = fig
            return super().figure(name, fig, alt)

    fairness_section(Capture(tmp_path, "s", "", "", runs))
    minority_axes = drawn["fairness"].axes[0]
    lines = [line for line in minority_axes.lines if line.get_marker() == "o"]  # data, not caps
    xs = [list(line.get_xdata()) for line in lines]
    # equal values at both levels: the lines are dodged around the share ticks 0 and 1
    assert len(xs) == 2 and xs[0] != xs[1]
    assert all(abs(x - round(x)) < 0.2 for line in xs for x in line)
    assert len(minority_axes.collections) >= 2  # a CI band per level
    # one legend, outside the last panel, so it hides no curve
    legends = [ax.get_legend() for ax in drawn["fairness"].axes]
    assert legends[-1] is not None and all(legend is None for legend in legends[:-1])
    assert legends[-1].get_bbox_to_anchor().x0 > drawn["fairness"].axes[-1].bbox.x1


def test_examples_caption_says_how_many_singh2020_images_saturate(tmp_path):
    runs = [_perturbed("singh2020_brightness_shift", eps, KIND_NONE, None) for eps in (0.25, 1.0)]
    for run in runs:
        run.config["dataset"] = "digits"
    page = perturbation_section(StudyData(tmp_path, "s", "", "", runs))
    assert (tmp_path / "figures" / "perturbation_examples.png").is_file()
    # P(|Laplace(255 / eps)| > 255) = exp(-eps)
    assert "(78% at ε=0.25, 37% at ε=1)" in page


def test_fairness_section_is_absent_without_imbalance_runs(tmp_path):
    plain = _run("p", {"epsilon": None}, {"dataset": "toy"})
    assert fairness_section(StudyData(tmp_path, "s", "", "", [plain])) is None


def _perturbed(mechanism: str, epsilon: float, kind: str, guarantee_epsilon):
    summary = {"perturbation": {"mechanism": mechanism, "parameters": {"epsilon": epsilon},
                                "spec": f"{mechanism}:eps={epsilon:g}",
                                "guarantee": {"kind": kind, "epsilon": guarantee_epsilon}}}
    return _run(f"{mechanism}-{epsilon}", {"dataset": "not-a-dataset", "epsilon": None},
                summary, accuracy=0.8, auc=0.85)


def test_perturbation_section_warns_beside_singh2020_and_keeps_its_table(tmp_path):
    runs = [_perturbed("singh2020_brightness_shift", 1.0, KIND_NONE, None),
            _perturbed("laplace", 1.0, KIND_LDP, 1.0),
            _run("dpsgd", {"epsilon": 1.0}, {}, accuracy=0.7, auc=0.75),
            _run("np", {"epsilon": None}, {}, accuracy=0.86, auc=0.95)]
    page = perturbation_section(StudyData(tmp_path, "s", "", "", runs))
    assert "singh2020_brightness_shift is NOT image-level privacy" in page
    assert f"<strong>{KIND_NONE}</strong>" in page  # its guarantee column
    assert (tmp_path / "figures" / "perturbation.png").is_file()
    # the examples need the dataset: without it the report says so instead of failing
    assert "Example images left out" in page
    # the figure's legend names the missing guarantee too
    assert _method_label("singh2020_brightness_shift", {1.0: runs[:1]}).endswith(
        "(NOT image-level privacy)")
    assert _method_label("laplace", {1.0: runs[1:2]}) == "laplace"


@pytest.mark.parametrize("runs", [[], [_run("np", {"epsilon": None}, {})]])
def test_perturbation_section_is_absent_without_perturbed_runs(tmp_path, runs):
    assert perturbation_section(StudyData(tmp_path, "s", "", "", runs)) is None
