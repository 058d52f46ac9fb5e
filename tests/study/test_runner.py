"""Running studies: the store records every run; reruns skip, resume or retry as documented."""

from __future__ import annotations

import json

import pytest

from dpscope.errors import ConfigError
from dpscope.run_folder import RunFolder
from dpscope.study import ResultsStore, load_spec, run_dir, run_study
from dpscope.study.store import STORE_FILE

from study_test_helpers import TINY_NONPRIVATE, write_spec


def store_of(study_dir):
    return ResultsStore(study_dir / STORE_FILE, create=False)


def test_study_records_every_run_with_its_summary_and_epochs(tmp_path):
    result = run_study(load_spec(write_spec(tmp_path, "s", TINY_NONPRIVATE)), tmp_path / "out")
    assert result.ok and len(result.finished) == 4
    with store_of(result.study_dir) as store:
        assert store.integrity_ok()
        for record in store.runs():
            summary = json.loads((run_dir(result.study_dir, record.id) / "summary.json").read_text())
            assert record.status == "finished" and record.attempts == 1
            assert record.test_accuracy == summary["test_accuracy"]
            assert record.summary == summary
            assert [e["epoch"] for e in store.epoch_metrics(record.id)] == [0, 1]
    assert (result.study_dir / "study.toml").read_text().startswith('name = "s"')


def test_rerun_skips_finished_runs_and_adopts_a_finished_folder(tmp_path):
    spec = load_spec(write_spec(tmp_path, "s", TINY_NONPRIVATE))
    first = run_study(spec, tmp_path / "out")
    with store_of(first.study_dir) as store:  # as if killed between summary.json and the store
        store.mark_running("lr0.2-seed1")
    second = run_study(spec, tmp_path / "out")
    assert second.finished == [] and second.already_finished == 4
    with store_of(first.study_dir) as store:
        assert {r.status for r in store.runs()} == {"finished"}


def test_changed_options_for_an_existing_run_are_refused(tmp_path):
    run_study(load_spec(write_spec(tmp_path, "s", TINY_NONPRIVATE)), tmp_path / "out")
    changed = write_spec(tmp_path, "s", TINY_NONPRIVATE.replace("epochs = 2", "epochs = 3"))
    with pytest.raises(ConfigError, match="epochs: 2 -> 3"):
        run_study(load_spec(changed), tmp_path / "out")


def test_runs_recorded_before_an_option_existed_still_count_as_the_same_runs(tmp_path):
    spec = load_spec(write_spec(tmp_path, "s", TINY_NONPRIVATE))
    first = run_study(spec, tmp_path / "out")
    with store_of(first.study_dir) as store:  # as written by a dpscope without `track_dynamics`
        with store._transaction() as db:
            for row in db.execute("SELECT id, config FROM runs").fetchall():
                config = json.loads(row["config"])
                del config["track_dynamics"]
                db.execute("UPDATE runs SET config = ? WHERE id = ?", (json.dumps(config), row["id"]))
    for record in first.finished:
        path = run_dir(first.study_dir, record) / "config.json"
        payload = json.loads(path.read_text())
        del payload["config"]["track_dynamics"]
        path.write_text(json.dumps(payload))
    again = run_study(spec, tmp_path / "out")
    assert again.finished == [] and again.already_finished == 4


def test_failed_runs_are_recorded_and_retried_only_when_asked(tmp_path):
    body = TINY_NONPRIVATE.replace('dataset = "digits"', 'dataset = "digits"') + \
        '[[variants]]\nname = "ok"\n[[variants]]\nname = "broken"\ndataset = "missing_file.npz"\n'
    spec = load_spec(write_spec(tmp_path, "s", body))
    first = run_study(spec, tmp_path / "out")
    assert len(first.failed) == 4 and len(first.finished) == 4 and not first.ok
    with store_of(first.study_dir) as store:
        failed = store.run("broken-lr0.05-seed0")
        assert failed.status == "failed" and "missing_file.npz" in failed.error
        assert "Traceback" in failed.traceback
    second = run_study(spec, tmp_path / "out")
    assert second.finished == [] and second.failed == [] and len(second.skipped_failed) == 4
    third = run_study(spec, tmp_path / "out", retry_failed=True)
    assert sorted(third.failed) == sorted(second.skipped_failed)
    with store_of(first.study_dir) as store:
        assert store.run("broken-lr0.05-seed0").attempts == 2


def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path):
    spec = load_spec(write_spec(tmp_path, "s", TINY_NONPRIVATE.replace("epochs = 2", "epochs = 3")))
    (planned, *_) = spec.runs()
    reference = run_study(spec, tmp_path / "reference")
    # train one epoch of the first run by hand, as a killed study would have left it
    from dpscope.train import train

    folder = run_dir(tmp_path / "out", planned.id)
    train(planned.config.model_copy(update={"epochs": 1}), run_dir=folder)
    (folder / "summary.json").unlink()
    config = json.loads((folder / "config.json").read_text())
    config["config"]["epochs"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    result = run_study(spec, tmp_path / "out")
    assert result.ok
    with store_of(result.study_dir) as store, store_of(reference.study_dir) as ref:
        assert store.run(planned.id).resumed_from_epoch == 1
        assert [e["epoch"] for e in store.epoch_metrics(planned.id)] == [0, 1, 2]
        assert store.run(planned.id).test_accuracy == ref.run(planned.id).test_accuracy
    assert RunFolder(folder).is_finished()


def test_a_second_study_process_on_the_same_folder_is_refused(tmp_path):
    from dpscope.study.runner import _study_lock

    spec = load_spec(write_spec(tmp_path, "s", TINY_NONPRIVATE))
    with _study_lock(tmp_path / "out"):
        with pytest.raises(ConfigError, match="another dpscope study"):
            run_study(spec, tmp_path / "out")
