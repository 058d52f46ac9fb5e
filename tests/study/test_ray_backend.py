"""--backend ray: the same study on a local Ray instance gives the same results as serial."""

from __future__ import annotations

import importlib.util

import pytest
from study_test_helpers import TINY_NONPRIVATE, write_spec

from dpscope.study import ResultsStore, load_spec, run_study
from dpscope.study.store import STORE_FILE

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                       reason="Ray is an optional extra: pip install 'dpscope[ray]' to test --backend ray"),
]


def accuracies(study_dir):
    with ResultsStore(study_dir / STORE_FILE, create=False) as store:
        return {r.id: (r.status, r.test_accuracy) for r in store.runs()}


def test_ray_backend_matches_serial(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # a private local instance, started and stopped here
    spec = load_spec(write_spec(tmp_path, "s", TINY_NONPRIVATE))
    serial = run_study(spec, tmp_path / "serial")
    on_ray = run_study(spec, tmp_path / "ray", workers=2, backend="ray")
    assert on_ray.ok and len(on_ray.finished) == 4
    assert accuracies(on_ray.study_dir) == accuracies(serial.study_dir)
