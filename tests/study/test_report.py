"""The study report: self-contained HTML, figures on disk and embedded, pluggable sections,
built from the store and run folders only; and the `runs` / `report` / `study` commands."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
from matplotlib.image import imread
from typer.testing import CliRunner

from dpscope.cli import app
from dpscope.study import build_report, register_section
from dpscope.study.report import sections as section_registry

FIGURES = ["privacy_utility", "per_class_accuracy", "training_curves"]


@pytest.fixture
def report(tiny_study, monkeypatch):
    """The report of the tiny study, built with training disabled (it must never retrain)."""
    import dpscope.train

    def refuse(*args, **kwargs):
        raise AssertionError("the report must not train")

    monkeypatch.setattr(dpscope.train, "train", refuse)
    monkeypatch.setattr(dpscope.train, "resume", refuse)
    return build_report(tiny_study)


def embedded_images(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_report_is_self_contained(report):
    page = report.read_text()
    assert "<script" not in page
    references = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert references and all(r.startswith(("data:", "#")) for r in references)


def test_every_figure_is_written_as_png_and_embedded(report):
    page = report.read_text()
    embedded = embedded_images(page)
    for name in FIGURES:
        data = (report.parent / "figures" / f"{name}.png").read_bytes()
        assert data in embedded
        pixels = imread(io.BytesIO(data))
        assert pixels.shape[0] > 200 and pixels.shape[1] > 300
        assert pixels[..., :3].std() > 0.05, f"{name}.png looks blank"


def test_report_has_the_runs_table_and_environment(report, tiny_study):
    page = report.read_text()
    for run_id in ("nonprivate-seed0", "nonprivate-seed1"):
        assert f"<code>{run_id}</code>" in page
    import torch

    environment = page[page.index('id="environment"'):]
    assert torch.__version__ in environment and "dpscope" in environment
    assert 'id="environment"' in page and 'id="runs"' in page
    for run_id in ("eps2-seed0", "eps8-seed1"):
        assert f"<code>{run_id}</code>" in page
    curve = page[page.index('id="privacy-utility"'):page.index('id="per-class"')]
    assert curve.count("<tr>") == 1 + 3  # header + (non-private, eps 2, eps 8)


@pytest.fixture
def restore_sections():
    saved = list(section_registry._SECTIONS)
    yield
    section_registry._SECTIONS[:] = saved


def test_a_registered_section_plugs_in_and_an_empty_one_is_left_out(tiny_study, restore_sections):
    register_section("extra", "Extra things", lambda study: f"<h2>Extra</h2><p>{len(study.runs)} runs</p>")
    register_section("nothing", "Nothing here", lambda study: None)
    page = build_report(tiny_study).read_text()
    assert '<a href="#extra">Extra things</a>' in page
    assert page.index('id="extra"') < page.index('id="runs"')
    assert "Nothing here" not in page


def test_runs_command_prints_a_table_and_json(tiny_study):
    runner = CliRunner()
    table = runner.invoke(app, ["runs", str(tiny_study)])
    assert table.exit_code == 0, table.output
    assert "nonprivate-seed0" in table.output and "finished" in table.output
    listing = runner.invoke(app, ["runs", str(tiny_study), "--json"])
    rows = json.loads(listing.stdout)
    assert {r["status"] for r in rows} == {"finished"}
    assert all(0 <= r["test_accuracy"] <= 1 for r in rows)


def test_report_command_writes_the_report(tiny_study):
    result = CliRunner().invoke(app, ["report", str(tiny_study)])
    assert result.exit_code == 0, result.output
    assert (tiny_study / "report.html").exists()


def test_commands_give_one_line_errors_and_exit_code_2(tmp_path, monkeypatch):
    from dpscope.console import err_console

    monkeypatch.setattr(err_console, "width", 1000)  # rich wraps at the terminal's width
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[grid]\nepochs = [1, "many"]\n')
    runner = CliRunner()
    for args, text in ((["study", str(bad)], "line 3: grid.epochs[1]"),
                       (["runs", str(tmp_path)], "not a study folder"),
                       (["report", str(tmp_path)], "not a study folder")):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert text in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_layer_dynamics_section_appears_for_runs_that_recorded_them(tmp_path):
    from study_test_helpers import TINY_NONPRIVATE, write_spec

    from dpscope.study import load_spec, run_study

    body = TINY_NONPRIVATE.replace("epochs = 2", "epochs = 3\ntrack_dynamics = true").replace(
        "seed = [0, 1]", "seed = [0]").replace("lr = [0.05, 0.2]", "lr = [0.2]")
    result = run_study(load_spec(write_spec(tmp_path, "dyn", body)), tmp_path / "study")
    page = build_report(result.study_dir).read_text()
    dynamics = page[page.index('<section id="dynamics">'):page.index('<section id="runs">')]
    assert "Layer-wise learning dynamics" in dynamics and "data:image/png;base64," in dynamics


def _view(run_id: str, **config):
    from pathlib import Path

    from dpscope.study.report import RunView
    from dpscope.study.store import RunRecord

    record = RunRecord(
        id=run_id, position=0, config=config, status="finished", attempts=1, created_at="",
        started_at=None, finished_at=None, wall_seconds=None, resumed_from_epoch=None, error=None,
        traceback=None, test_accuracy=0.9, test_balanced_accuracy=None, test_auc=None,
        test_loss=None, epsilon=config.get("epsilon"), delta=None, seconds=1.0, summary={})
    return RunView(record, Path(run_id), {}, [])


def test_curves_keep_their_non_private_reference_when_dp_uses_other_hyperparameters():
    from pathlib import Path

    from dpscope.study.report import StudyData

    runs = [_view(f"{name}-{model}", model=model, epsilon=eps, lr=lr, seed=0)
            for model in ("cnn", "resnet18")
            for name, eps, lr in (("nonprivate", None, 0.05), ("eps1", 1.0, 2.0), ("eps8", 8.0, 2.0))]
    series = StudyData(Path("."), "s", "", "", runs).series()
    assert sorted(series) == ["model=cnn", "model=resnet18"]
    assert sorted(r.id for r in series["model=cnn"]) == ["eps1-cnn", "eps8-cnn", "nonprivate-cnn"]
