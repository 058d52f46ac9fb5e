"""Runs composed together (`dpscope privacy compose`): equal to dp_accounting composing the same
events directly, conservative for unfinished runs, infinite with a non-private run, clear errors."""

import json
import math
import shutil

import dp_accounting
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from typer.testing import CliRunner

from dpscope.cli import app
from dpscope.config import make_run_config
from dpscope.errors import PrivacyError
from dpscope.privacy import RDP_ORDERS
from dpscope.privacy.composition import compose_runs, read_run_spend
from dpscope.train import train
from loop_helpers import CrashAtEpoch

RUN = dict(dataset="digits", model="mlp", epochs=2, batch_size=128, lr=0.5, momentum=0.0,
           threads=1, max_grad_norm=1.0, delta=1e-5)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished private runs with different noise, one cut in its second epoch, one
    non-private: all on digits."""
    root = tmp_path_factory.mktemp("runs")
    train(make_run_config(**RUN, epsilon=2.0), run_dir=root / "eps2")
    train(make_run_config(**RUN, noise_multiplier=3.0, seed=1), run_dir=root / "sigma3")
    with pytest.raises(KeyboardInterrupt):
        train(make_run_config(**RUN, epsilon=2.0, seed=2), run_dir=root / "cut",
              callbacks=[CrashAtEpoch(1)])
    train(make_run_config(**{**RUN, "epochs": 1}), run_dir=root / "public")
    return root


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def _direct(events, delta, accountant):
    """dp_accounting itself, with dpscope's accountant settings, composing `events`."""
    relation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    acc = (pld_privacy_accountant.PLDAccountant(relation, value_discretization_interval=1e-3)
           if accountant == "pld" else rdp_privacy_accountant.RdpAccountant(list(RDP_ORDERS), relation))
    for q, sigma, steps in events:
        acc.compose(dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps))
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_two_finished_runs_compose_as_dp_accounting_does(runs, accountant):
    a, b = _summary(runs / "eps2"), _summary(runs / "sigma3")
    composed = compose_runs([runs / "eps2", runs / "sigma3"], accountant=accountant)
    events = [(s["sample_rate"], s["noise_multiplier"], s["privacy_steps"]) for s in (a, b)]
    assert composed.epsilon == pytest.approx(_direct(events, 1e-5, accountant), rel=1e-6)
    assert composed.alone[0] == pytest.approx(_direct(events[:1], 1e-5, accountant), rel=1e-6)
    if accountant == "pld":
        assert composed.alone[0] == pytest.approx(a["epsilon"], rel=1e-9)
        assert composed.alone[1] == pytest.approx(b["epsilon"], rel=1e-9)
    assert max(composed.alone) < composed.epsilon < sum(composed.alone)
    assert [r.counted_as for r in composed.runs] == ["ledger", "ledger"]


def test_the_same_run_twice_costs_twice_its_steps(runs):
    s = _summary(runs / "eps2")
    twice = compose_runs([runs / "eps2", runs / "eps2"])
    direct = _direct([(s["sample_rate"], s["noise_multiplier"], 2 * s["privacy_steps"])], 1e-5, "pld")
    assert twice.epsilon == pytest.approx(direct, rel=1e-6)


def test_an_unfinished_run_counts_its_whole_plan(runs):
    cut = read_run_spend(runs / "cut")
    finished = read_run_spend(runs / "eps2")
    ledger = json.loads((runs / "cut" / "privacy_ledger.json").read_text())
    recorded = sum(seg["steps"] for seg in ledger["ledger"]["segments"])
    assert cut.counted_as == "plan (unfinished)"
    assert recorded < cut.steps == ledger["plan"]["steps"] == finished.steps
    composed = compose_runs([runs / "cut"])
    assert composed.epsilon == pytest.approx(_summary(runs / "eps2")["epsilon"], rel=1e-9)


def test_a_non_private_run_makes_the_total_infinite(runs):
    composed = compose_runs([runs / "eps2", runs / "public"])
    assert composed.runs[1].counted_as == "non-private"
    assert math.isinf(composed.alone[1]) and math.isinf(composed.epsilon)
    assert math.isfinite(composed.alone[0])


def test_an_opacus_twin_counts_the_events_of_its_summary(runs, tmp_path):
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / "summary.json").write_text(json.dumps({
        "dataset": "digits", "private": True, "noise_multiplier": 1.5, "sample_rate": 0.1,
        "privacy_steps": 20, "delta": 1e-5}))
    composed = compose_runs([runs / "eps2", twin])
    s = _summary(runs / "eps2")
    direct = _direct([(s["sample_rate"], s["noise_multiplier"], s["privacy_steps"]), (0.1, 1.5, 20)],
                     1e-5, "pld")
    assert composed.runs[1].counted_as == "summary"
    assert composed.epsilon == pytest.approx(direct, rel=1e-6)


def test_delta_given_overrides_the_runs_own(runs):
    loose = compose_runs([runs / "eps2", runs / "sigma3"], delta=1e-3)
    tight = compose_runs([runs / "eps2", runs / "sigma3"])
    assert loose.delta == 1e-3 and loose.epsilon < tight.epsilon


def _copy(run, to, **config_changes):
    shutil.copytree(run, to)
    record = json.loads((to / "config.json").read_text())
    record["config"].update(config_changes)
    (to / "config.json").write_text(json.dumps(record))
    return to


def test_refusals(runs, tmp_path):
    with pytest.raises(PrivacyError, match="different datasets"):
        compose_runs([runs / "eps2", _copy(runs / "sigma3", tmp_path / "other", dataset="mnist")])
    with pytest.raises(PrivacyError, match="no such run folder"):
        compose_runs([tmp_path / "missing"])
    with pytest.raises(PrivacyError, match="no runs"):
        compose_runs([])
    with pytest.raises(PrivacyError, match="deltas differ or are missing"):
        compose_runs([runs / "public"])
    corrupt = _copy(runs / "eps2", tmp_path / "corrupt")
    (corrupt / "privacy_ledger.json").write_text("{not json")
    with pytest.raises(PrivacyError, match="not valid JSON"):
        compose_runs([corrupt])
    unrecorded = _copy(runs / "eps2", tmp_path / "unrecorded")
    (unrecorded / "privacy_ledger.json").unlink()
    (unrecorded / "summary.json").unlink()
    with pytest.raises(PrivacyError, match="not recorded"):
        compose_runs([unrecorded])


def test_cli_prints_the_table_and_writes_json(runs, tmp_path):
    out = tmp_path / "spent.json"
    result = CliRunner().invoke(app, ["privacy", "compose", str(runs / "eps2"), str(runs / "sigma3"),
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert f"epsilon {record['epsilon']:.4g} at delta 1e-05" in result.output
    assert [r["counted_as"] for r in record["runs"]] == ["ledger", "ledger"]


def test_runs_normalised_by_their_training_statistics_are_flagged(runs, tmp_path):
    old = _copy(runs / "eps2", tmp_path / "old")  # a run from before fixed input statistics
    record = json.loads((old / "config.json").read_text())
    del record["config"]["input_normalization"]
    (old / "config.json").write_text(json.dumps(record))
    summary = _summary(old)
    del summary["input_normalization"]
    (old / "summary.json").write_text(json.dumps(summary))
    twin = tmp_path / "twin"  # an Opacus twin that records no input statistics: an old one
    twin.mkdir()
    (twin / "summary.json").write_text(json.dumps({
        "dataset": "digits", "private": True, "noise_multiplier": 1.5, "sample_rate": 0.1,
        "privacy_steps": 20, "delta": 1e-5}))
    composed = compose_runs([runs / "eps2", runs / "cut", old, twin])
    assert [run.input_statistics_covered for run in composed.runs] == [True, True, False, False]
    assert composed.uncovered_input_statistics == composed.runs[2:]
    out = tmp_path / "spent.json"
    result = CliRunner().invoke(app, ["privacy", "compose", str(runs / "eps2"), str(old), "--json", str(out)])
    assert result.exit_code == 0 and "WARNING" in result.output and "1 of the runs" in result.output
    assert [r["input_statistics_covered"] for r in json.loads(out.read_text())["runs"]] == [True, False]
    clean = CliRunner().invoke(app, ["privacy", "compose", str(runs / "eps2"), str(runs / "sigma3")])
    assert "WARNING" not in clean.output


@pytest.mark.parametrize("arguments, message", [
    (["missing"], "no such run folder"),
    (["RUN", "--accountant", "moments"], "--accountant"),
    (["RUN", "--delta", "2"], "--delta"),
])
def test_cli_errors_are_one_line_exit_2(runs, tmp_path, arguments, message):
    arguments = [str(runs / "eps2") if a == "RUN" else str(tmp_path / a) if a == "missing" else a
                 for a in arguments]
    result = CliRunner().invoke(app, ["privacy", "compose", *arguments])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
