"""Shared fixtures of the study tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from study_test_helpers import TINY, write_spec

from dpscope.study import load_spec, run_study


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory) -> Path:
    """A finished tiny study (run once per session), for the report and listing tests."""
    folder = tmp_path_factory.mktemp("tiny")
    result = run_study(load_spec(write_spec(folder, "tiny", TINY)), folder / "study")
    assert result.ok
    return result.study_dir
