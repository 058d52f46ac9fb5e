"""The shipped studies (imbalance, perturbation, dynamics): they expand as documented, and a
tiny version of each, cut from the shipped file (digits, mlp, 1-2 epochs, one thread), runs end
to end from spec to report."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from typer.testing import CliRunner

from dpscope.cli import app
from dpscope.study import load_spec, run_study
from dpscope.study.report import REPORT_FILE

STUDIES = Path(__file__).resolve().parents[1] / "studies"
TINY_BASE = {"dataset": "digits", "model": "mlp", "epochs": 1, "threads": 1, "batch_size": 128,
             "lr": 0.1}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _toml(raw: dict[str, Any]) -> str:
    lines = [f"name = {_toml_value(raw['name'])}"]
    for table in ("base", "grid"):
        lines += [f"[{table}]", *(f"{k} = {_toml_value(v)}" for k, v in raw[table].items())]
    for variant in raw.get("variants", []):
        lines += ["[[variants]]", *(f"{k} = {_toml_value(v)}" for k, v in variant.items())]
    return "\n".join(lines) + "\n"


def tiny_copy(name: str, folder: Path, grid: dict[str, list], keep_variant=lambda v: True,
              **base: Any) -> Path:
    """The shipped spec `name` on digits at toy size: grid axes cut to `grid`, variants kept by
    `keep_variant` and moved to digits."""
    raw = tomllib.loads((STUDIES / f"{name}.toml").read_text())
    for key, values in grid.items():
        assert set(values) <= set(raw["grid"][key]), f"{key}: {values} not in the shipped grid"
    raw["grid"] = {**raw["grid"], **grid}
    raw["base"] = {**raw["base"], **TINY_BASE, **base}
    raw["variants"] = [{k: v for k, v in variant.items() if k not in ("dataset", "epochs")}
                       for variant in raw.get("variants", []) if keep_variant(variant)]
    path = folder / f"{name}.toml"
    path.write_text(_toml(raw))
    return path


@pytest.mark.parametrize("name, runs", [("imbalance", 120), ("perturbation", 78),
                                        ("dynamics", 12)])
def test_shipped_study_expands(name, runs):
    planned = load_spec(STUDIES / f"{name}.toml").runs()
    assert len(planned) == runs
    assert len({run.id for run in planned}) == runs


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_spec_loads_and_names_its_runs_uniquely(path):
    planned = load_spec(path).runs()
    assert planned and len({run.id for run in planned}) == len(planned)


def test_imbalance_study_grid_is_the_papers():
    configs = [r.config for r in load_spec(STUDIES / "imbalance.toml").runs()]
    assert sorted({c.majority_share for c in configs}) == [0.7, 0.8, 0.9, 0.99, 0.999]
    assert {(c.dataset, c.minority_group) for c in configs} == {("pneumoniamnist", "normal"),
                                                                ("digits", "8")}
    assert {c.epsilon for c in configs} == {1.0, 3.0, 8.0, None}
    assert {c.seed for c in configs} == {0, 1, 2}


def test_perturbation_study_pairs_every_mechanism_with_dpsgd_at_each_epsilon():
    configs = [r.config for r in load_spec(STUDIES / "perturbation.toml").runs() if r.config.seed == 0]
    from dpscope.data.perturb import parse_mechanism

    by_method = {}
    for c in configs:
        method, eps = ((parse_mechanism(c.perturb).name, parse_mechanism(c.perturb).epsilon)
                       if c.perturb else ("dpsgd" if c.epsilon else "none", c.epsilon))
        by_method.setdefault(method, set()).add(eps)
    wanted = {0.25, 0.5, 1.0, 3.0, 8.0}
    assert by_method.pop("none") == {None}
    assert by_method == {m: wanted for m in ("laplace", "gaussian", "dp_pix",
                                             "singh2020_brightness_shift", "dpsgd")}


def _run(spec: Path, folder: Path) -> tuple[Path, str]:
    """Run the study, then `dpscope report` (which registers the wiring's report sections)."""
    result = run_study(load_spec(spec), folder / "study")
    assert result.ok
    report = CliRunner().invoke(app, ["report", str(result.study_dir)])
    assert report.exit_code == 0, report.output
    return result.study_dir, (result.study_dir / REPORT_FILE).read_text()


@pytest.mark.slow
def test_tiny_imbalance_study_reports_fairness(tmp_path):
    # non-private only: the private path with fairness is test_wiring_train's
    spec = tiny_copy("imbalance", tmp_path, {"majority_share": [0.9, 0.99], "epsilon": ["none"],
                                             "seed": [0]},
                     keep_variant=lambda v: v["name"] == "digits")
    study_dir, page = _run(spec, tmp_path)
    summaries = [json.loads(p.read_text()) for p in study_dir.glob("runs/*/summary.json")]
    assert len(summaries) == 2
    assert {s["imbalance"]["train"]["group_examples"] for s in summaries} == {122, 11}
    assert all("fairness" in s for s in summaries)
    assert "Fairness under imbalance" in page and (study_dir / "figures/fairness.png").is_file()


@pytest.mark.slow
def test_tiny_perturbation_study_reports_each_mechanism(tmp_path):
    kept = {"nonprivate", "dp_pix-eps1", "singh2020-eps1", "dpsgd-eps1"}
    spec = tiny_copy("perturbation", tmp_path, {"seed": [0]},
                     keep_variant=lambda v: v["name"] in kept)
    study_dir, page = _run(spec, tmp_path)
    assert len(list(study_dir.glob("runs/*/summary.json"))) == 4
    assert "Input perturbation vs DP-SGD" in page
    assert "singh2020_brightness_shift is NOT image-level privacy" in page
    for figure in ("perturbation.png", "perturbation_examples.png"):
        assert (study_dir / "figures" / figure).is_file()


@pytest.mark.slow
def test_tiny_dynamics_study_reports_layer_dynamics(tmp_path):
    spec = tiny_copy("dynamics", tmp_path, {"dataset": ["digits"], "epsilon": ["none", 8.0],
                                            "seed": [0]}, epochs=2)
    study_dir, page = _run(spec, tmp_path)
    assert len(list(study_dir.glob("runs/*/dynamics.json"))) == 2
    assert "Layer-wise learning dynamics" in page
