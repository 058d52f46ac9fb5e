"""The dynamics section of a study report writes its figures next to the report."""

import json

import pytest
from test_analyze import synthetic_series

from dpscope.study.report import RunView
from dpscope.study.report.data import StudyData
from dpscope.study.store import RunRecord
from dpscope.study_sections import dynamics_section


def finished(run_id, folder, epsilon):
    record = RunRecord(
        id=run_id, position=0, config={"epsilon": epsilon}, status="finished", attempts=1,
        created_at="", started_at=None, finished_at=None, wall_seconds=None,
        resumed_from_epoch=None, error=None, traceback=None, test_accuracy=0.9,
        test_balanced_accuracy=None, test_auc=None, test_loss=None, epsilon=epsilon, delta=None,
        seconds=1.0, summary={})
    return RunView(record, folder, {}, [])


@pytest.mark.slow
def test_dynamics_section_writes_each_figure_as_a_png_beside_the_report(tmp_path):
    runs = []
    for run_id, private, epsilon in (("np", False, None), ("eps8", True, 8.0)):
        folder = tmp_path / "runs" / run_id
        synthetic_series(private, seed=len(runs)).save(folder)
        (folder / "summary.json").write_text(json.dumps(
            {"epsilon": epsilon, "model": "resnet20", "dataset": "digits"}))
        runs.append(finished(run_id, folder, epsilon))
    study = StudyData(tmp_path, "s", "", "", runs)
    html = dynamics_section(study)
    names = {path.name for path in (tmp_path / "figures").iterdir()}
    assert {"dynamics_comparison.png", "dynamics_comparison_rwc_mean_ratio.png",
            "dynamics_np_heatmap.png", "dynamics_eps8_privacy.png"} <= names
    assert html.count("data:image/png;base64,") == len(names) == len(study.figures)
    # synthetic curves: deeper families start higher and decay slower
    assert "non-private · resnet20 · digits (1 run): later layers change more" in html
    assert dynamics_section(StudyData(tmp_path, "s", "", "", [])) is None
