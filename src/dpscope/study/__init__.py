"""Studies: declarative sweeps of runs, a results store, parallel execution and a report.

    spec = load_spec("studies/quickstart.toml")     # TOML -> validated StudySpec
    result = run_study(spec, workers=2)              # runs into studies_out/quickstart/
    build_report(result.study_dir)                   # report.html and figures/*.png

Names are loaded on first use, so `dpscope --help` does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "StudySpec": "spec", "PlannedRun": "spec", "load_spec": "spec", "parse_spec": "spec",
    "run_study": "runner", "StudyResult": "runner", "default_study_dir": "runner",
    "run_dir": "runner",
    "ResultsStore": "store", "RunRecord": "store",
    "build_report": "report", "register_section": "report", "StudyData": "report",
    "run_rows": "listing",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dpscope.study' has no attribute {name!r}")
    return getattr(importlib.import_module(f"dpscope.study.{_EXPORTS[name]}"), name)
